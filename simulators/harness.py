"""Run the real server and real agents as processes against a real broker.

Used by the demo, the end-to-end tests, the benchmarks and scenario replays: everything goes
through the same console entry points an ops engineer uses (``classcam-server``,
``classcam-agent``), configured the way production is (environment for the server, a
provisioned TOML + credential files for each device).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from simulators.broker import (
    SCHEDULER_USER,
    SERVER_USER,
    BrokerAccounts,
    free_port,
    kill_process,
    stop_process,
)


class Broker(Protocol):
    host: str
    port: int

    def add_account(self, username: str, password: str | None = None) -> str: ...

    accounts: BrokerAccounts


def _python_cmd(module: str) -> list[str]:
    return [sys.executable, "-m", module]


@dataclass
class ServerProcess:
    """``classcam-server run`` in a child process, with its state under ``data_dir``."""

    data_dir: Path
    broker: Broker
    protocol: str = "5"
    shared_group: str | None = "ingest"
    database_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    api_port: int = field(default_factory=free_port)
    # What ``start`` runs: ``simulators.sim_server`` runs it on a replay's shared clock.
    run_module: str = "ingest_server.cli"
    # ``run`` (the whole server) or ``ingest`` (one more worker on the shared subscription).
    command: str = "run"
    admin_token: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def evidence_dir(self) -> Path:
        return self.data_dir / "evidence"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'classcam.db'}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "CLASSCAM_DATA_DIR": str(self.data_dir),
                "CLASSCAM_DATABASE_URL": self.db_url,
                "CLASSCAM_EVIDENCE_DIR": str(self.evidence_dir),
                "CLASSCAM_MQTT_HOST": self.broker.host,
                "CLASSCAM_MQTT_PORT": str(self.broker.port),
                "CLASSCAM_MQTT_USERNAME": SERVER_USER,
                "CLASSCAM_MQTT_PASSWORD": self.broker.accounts.passwords[SERVER_USER],
                "CLASSCAM_MQTT_SCHEDULER_USERNAME": SCHEDULER_USER,
                "CLASSCAM_MQTT_SCHEDULER_PASSWORD": self.broker.accounts.passwords[SCHEDULER_USER],
                "CLASSCAM_MQTT_PROTOCOL": self.protocol,
                "CLASSCAM_SHARED_GROUP": self.shared_group or "",
                "CLASSCAM_API_PORT": str(self.api_port),
            }
        )
        env.update(self.extra_env)
        return env

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api/v1"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a ``classcam-server`` subcommand to completion; raise on failure."""
        result = subprocess.run(
            [*_python_cmd("ingest_server.cli"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"classcam-server {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def api_token(self, role: str = "admin", *scope: str) -> str:
        """A new API token from ``classcam-server token create --role ROLE [scope args]``."""
        out = self.cli("token", "create", "--role", role, "--name", f"harness-{role}", *scope)
        return [line for line in out.stdout.split() if line.startswith("cc_")][-1]

    def api_headers(self) -> dict[str, str]:
        """``Authorization`` with an admin token (made once per server): the API answers
        nobody without one."""
        if self.admin_token is None:
            self.admin_token = self.api_token()
        return {"Authorization": f"Bearer {self.admin_token}"}

    def register_device(self, device_id: str, public_key: str) -> None:
        self.cli("register-device", "--device-id", device_id, "--public-key", public_key)

    def start(self, ready_timeout: float = 30.0) -> None:
        """Start consuming; return once the server says it is subscribed."""
        if self.process and self.process.poll() is None:
            return
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [*_python_cmd(self.run_module), self.command],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            text = self.log_file.read_bytes()[offset:].decode(errors="replace")
            if re.search(r"\bsubscribed\b", text):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{text[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"server not subscribed after {ready_timeout} s:\n{self.tail_log()}")

    def stop(self) -> None:
        stop_process(self.process, timeout=15)
        self.process = None

    def kill(self) -> None:
        kill_process(self.process)
        self.process = None

    def tail_log(self, chars: int = 4000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:] if self.log_file.exists() else ""


@dataclass
class Device:
    """A provisioned device: its directory holds agent.toml, its key and broker password."""

    device_id: str
    root: Path
    public_key: str

    @property
    def config_path(self) -> Path:
        return self.root / "agent.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a ``classcam-agent`` subcommand with this device's config; raise on failure."""
        result = subprocess.run(
            [*_python_cmd("edge_agent.cli"), args[0], "--config", str(self.config_path), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"classcam-agent {' '.join(args)} failed "
                f"({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def spawn(
        self,
        *args: str,
        log_name: str = "agent.log",
        env: dict[str, str] | None = None,
        module: str = "edge_agent.cli",
    ) -> subprocess.Popen[bytes]:
        """Start a ``classcam-agent`` subcommand in the background, logging beside its state
        (``module``: another entry point taking the same arguments, e.g. ``simulators.sim_agent``
        on a replay's clock)."""
        log = (self.root / log_name).open("ab")
        return subprocess.Popen(
            [*_python_cmd(module), args[0], "--config", str(self.config_path), *args[1:]],
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def provision_device(
    root: Path,
    device_id: str,
    broker: Broker,
    *,
    protocol: str = "5",
    settings: dict[str, dict[str, object]] | None = None,
) -> Device:
    """``classcam-agent provision`` a device under ``root``, give it a broker account and point
    its config at ``broker``; ``settings`` overrides config fields by section."""
    device_dir = root / device_id
    result = subprocess.run(
        [
            *_python_cmd("edge_agent.cli"),
            "provision",
            "--device-id",
            device_id,
            "--out",
            str(device_dir),
            "--broker-host",
            broker.host,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    public_key = result.stdout.strip().splitlines()[-1]
    password = (device_dir / "broker-password").read_text().strip()
    broker.add_account(device_id, password)
    overrides: dict[str, dict[str, object]] = {
        "": {"state_dir": str(device_dir / "state")},
        # The plain loopback listener: tests put fault proxies on this port. TLS has its own
        # tests (tests/common/test_broker_acl.py).
        "broker": {"port": broker.port, "protocol": protocol, "tls": False},
    }
    for section, values in (settings or {}).items():
        overrides.setdefault(section, {}).update(values)
    config = device_dir / "agent.toml"
    config.write_text(set_toml_values(config.read_text(), overrides))
    return Device(device_id, device_dir, public_key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_toml_values(text: str, overrides: dict[str, dict[str, object]]) -> str:
    """Set ``key = value`` lines in the sections of a flat TOML document (documented example
    configs keep their comments); a key that is absent is added at the end of its section."""
    lines = text.splitlines()
    section = ""
    pending = {s: dict(v) for s, v in overrides.items()}
    out: list[str] = []

    def flush(sec: str) -> None:
        for key, value in pending.pop(sec, {}).items():
            out.append(f"{key} = {_toml_value(value)}")

    for line in lines:
        header = re.match(r"^\[([A-Za-z0-9_.]+)\]\s*$", line)
        if header:
            flush(section)
            section = header.group(1)
            out.append(line)
            continue
        assign = re.match(r"^\s*#?\s*([A-Za-z0-9_]+)\s*=", line)
        wanted = pending.get(section, {})
        if assign and assign.group(1) in wanted:
            key = assign.group(1)
            out.append(f"{key} = {_toml_value(wanted.pop(key))}")
            continue
        out.append(line)
    flush(section)
    for sec in list(pending):
        out.append(f"[{sec}]")
        flush(sec)
    return "\n".join(out) + "\n"
