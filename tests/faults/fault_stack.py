"""The fault suite's stack of real processes: Mosquitto with a wiretap account, one
``classcam-server run``, ``classcam-agent run`` devices with a synthetic camera (killed and
restarted by the tests), and a driver that sends a device its commands as the server would.
The invariants live in ``fault_checks.py``, the count of faults in ``fault_ledger.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fault_checks import Expectation, read_only, wait_until

from common.clock import utc_now
from common.commands import Command, CommandType
from edge_agent.clips import upload_id_for
from edge_agent.config import AgentConfig, load_config
from simulators.harness import Device, ServerProcess, provision_device
from simulators.netlink import ShapedLink
from simulators.wiretap import Wiretap, WiretapBroker

SMALL_CAMERA = {"width": 320, "height": 240, "fps": 10.0}
FAST_RECORDING = {"segment_seconds": 1.0, "keyframe_interval_s": 1.0, "bitrate": 300_000}
# Small chunks and a paced uplink: a 2 s clip (~100 KB) takes a second or two to send, long
# enough to be interrupted at a random point.
PACED_UPLOAD = {
    "chunk_size": 16384,
    "rate_limit_bytes_per_s": 96 * 1024,
    "window": 4,
    "ack_timeout_s": 3.0,
    "retry_min_s": 1.0,
    "retry_max_s": 4.0,
}
QUICK_RECONNECT = {"reconnect_min_s": 1.0, "reconnect_max_s": 2.0}


# -- the stack --------------------------------------------------------------------------------


def device_settings(extra: dict[str, dict[str, object]] | None = None) -> dict[str, Any]:
    settings: dict[str, dict[str, object]] = {
        "camera": dict(SMALL_CAMERA),
        "recording": dict(FAST_RECORDING),
        "upload": dict(PACED_UPLOAD),
        "broker": dict(QUICK_RECONNECT),
        "heartbeat": {"interval_s": 30.0},
        "storage": {"low_water_mb": 0, "critical_mb": 0},
    }
    for section, values in (extra or {}).items():
        settings.setdefault(section, {}).update(values)
    return settings


class AgentProcess:
    """``classcam-agent run`` for one device, started, SIGKILLed and restarted by the test."""

    def __init__(self, device: Device, wiretap: Wiretap) -> None:
        self.device = device
        self.config: AgentConfig = load_config(device.config_path)
        self.wiretap = wiretap
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = utc_now()
        self.kills = 0

    @property
    def device_id(self) -> str:
        return self.device.device_id

    def start(self, timeout: float = 30.0) -> None:
        """Spawn the agent; return once the broker has its ``online``."""
        since = time.monotonic()
        self.started_at = utc_now()
        self.process = self.device.spawn("run")
        try:
            self.wiretap.wait_for(
                lambda: self.wiretap.online_since(self.device_id, since),
                timeout,
                f"{self.device_id} online",
            )
        except TimeoutError:
            raise AssertionError(f"agent did not come online:\n{self.tail_log()}") from None

    def kill(self) -> None:
        """SIGKILL: a power cut, as far as the agent can tell."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.kills += 1
        self.process = None

    def stop(self) -> None:
        """SIGTERM and wait: a clean stop."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def tail_log(self, chars: int = 3000) -> str:
        path = self.device.root / "agent.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class FaultStack:
    """One broker (with a wiretap), one server process and the devices of every scenario,
    set up once for the suite; ``linked`` devices dial the broker through a shaped link."""

    def __init__(
        self,
        root: Path,
        device_names: list[str],
        linked: tuple[str, ...] = (),
        settings: dict[str, dict[str, object]] | None = None,
    ) -> None:
        self.root = root
        self.broker = WiretapBroker(root / "broker")
        self.link = ShapedLink(self.broker.host, self.broker.port).start()
        self.server = ServerProcess(root / "server", self.broker)
        # Accounts added before the broker starts are written once, not once per device.
        with ThreadPoolExecutor(4) as pool:
            migrated = pool.submit(self.server.cli, "migrate")
            made = [
                pool.submit(self._provision, name, settings, name in linked)
                for name in device_names
            ]
            self.devices = {f.result().device_id: f.result() for f in made}
            migrated.result()
        self.broker.start()
        self._register(list(self.devices.values()))
        self.server.start()
        self.wiretap = Wiretap(self.broker)

    def _provision(
        self, name: str, settings: dict[str, dict[str, object]] | None, linked: bool
    ) -> Device:
        device = provision_device(
            self.root / "devices", name, self.broker, settings=device_settings(settings)
        )
        if linked:
            text = device.config_path.read_text()
            text = text.replace(f"port = {self.broker.port}", f"port = {self.link.port}")
            device.config_path.write_text(text)
        return device

    def _register(self, devices: list[Device]) -> None:
        """All devices in one ``classcam-server import`` (one process start, not one each)."""
        setup = {
            "institutions": [{"id": "fault-school", "name": "fault school"}],
            "classrooms": [
                {
                    "id": f"room-{d.device_id}",
                    "institution_id": "fault-school",
                    "name": d.device_id,
                    "lat": 30.0,
                    "lon": 120.0,
                }
                for d in devices
            ],
            "devices": [
                {
                    "device_id": d.device_id,
                    "classroom_id": f"room-{d.device_id}",
                    "public_key": d.public_key,
                }
                for d in devices
            ],
        }
        path = self.root / "setup.json"
        path.write_text(json.dumps(setup))
        self.server.cli("import", str(path))

    def agent(self, name: str) -> AgentProcess:
        return AgentProcess(self.devices[name], self.wiretap)

    def close(self) -> None:
        self.wiretap.close()
        self.link.stop()
        self.server.stop()
        self.broker.stop()

    # -- what the server holds --------------------------------------------------------------

    def db(self) -> contextlib.closing[sqlite3.Connection]:
        return read_only(Path(self.server.db_url.removeprefix("sqlite:///")))

    def restart_server(self) -> None:
        self.server.kill()
        self.server.start()


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


# -- the devices of each scenario, provisioned once for the suite -------------------------------

KILL_DEVICES = tuple(f"cam-kill-{i}" for i in range(4))
# Later scenarios reuse devices that earlier ones killed (each provisioning costs a process
# start and a broker password hash): their outbox and events are checked all over again.
SERVER_DEVICES = KILL_DEVICES[:2]
BROKER_DEVICE = KILL_DEVICES[2]
LINK_DEVICE = "cam-link-0"
MESSAGE_DEVICE = "cam-msg-0"
ALL_DEVICES = (*KILL_DEVICES, LINK_DEVICE, MESSAGE_DEVICE)
LINKED_DEVICES = (LINK_DEVICE,)


class Driver:
    """Sends one device its commands through the wiretap and remembers them as expected."""

    def __init__(self, stack: FaultStack, agent: AgentProcess) -> None:
        self.stack = stack
        self.agent = agent
        self.device_id = agent.device_id
        self.expectation = Expectation(agent.device_id, agent.config)
        self.session_id = f"s-{agent.device_id}-{uuid.uuid4().hex[:6]}"
        self._last_resend = time.monotonic()

    def send(self, type_: CommandType, **fields: Any) -> Command:
        cmd = self.stack.wiretap.command(self.device_id, type_, **fields)
        self.expectation.commands.append(cmd)
        self.stack.wiretap.send(self.device_id, cmd)
        return cmd

    def resend_unanswered(self, every_s: float = 3.0) -> None:
        """What the server's scheduler does for a command a crashed broker lost: ask again,
        same ``cmd_id`` (the agent answers a repeat with its first answer), at most every
        ``every_s``."""
        if time.monotonic() - self._last_resend < every_s:
            return
        self._last_resend = time.monotonic()
        for cmd in self.expectation.commands:
            if not self.stack.wiretap.replies(cmd.cmd_id):
                self.stack.wiretap.send(self.device_id, cmd)

    def answer(self, cmd: Command, timeout: float = 30.0) -> Any:
        """Wait for the agent's answer to ``cmd``, asking again while none comes (a broker
        that crashed may have lost it, as the server's scheduler knows)."""

        def answered() -> Any:
            replies = self.stack.wiretap.replies(cmd.cmd_id)
            if not replies:
                self.resend_unanswered()
            return replies

        return wait_until(answered, timeout, f"answer to {cmd.cmd_id}")

    def open_session(self, windows: int) -> None:
        cmd = self.send(CommandType.OPEN_SESSION, session_id=self.session_id, windows=windows)
        self.answer(cmd)

    def close_session(self) -> None:
        self.answer(self.send(CommandType.CLOSE_SESSION, session_id=self.session_id))

    def cut_behind(self, length_s: float = 2.0) -> Command:
        """Ask for the newest ``length_s`` the agent has recorded since it last started."""
        return self.cut(*self.recorded_window(length_s))

    def recorded_window(self, length_s: float, timeout: float = 30.0) -> tuple[datetime, datetime]:
        """The newest window of ``length_s`` held in finished segments of the agent's spool
        since it last started; waits for that much footage (a loaded box starts slowly)."""
        index = self.agent.config.spool_dir / "index.sqlite3"
        since_us = round(self.agent.started_at.timestamp() * 1_000_000)

        def span() -> tuple[int, int] | None:
            if not index.exists():
                return None
            with read_only(index) as db:
                first, last = db.execute(
                    "SELECT min(start_wall_us), max(end_wall_us) FROM segments"
                    " WHERE start_wall_us >= ?",
                    (since_us,),
                ).fetchone()
            if first is None or (last - first) / 1e6 < length_s + 0.2:
                return None
            return first, last

        _, last = wait_until(span, timeout, f"{length_s} s recorded by {self.device_id}")
        end = datetime.fromtimestamp(last / 1e6, UTC) - timedelta(seconds=0.1)
        return end - timedelta(seconds=length_s), end

    def cut(self, start: datetime, end: datetime) -> Command:
        n = len(self.expectation.commands)
        return self.send(
            CommandType.CUT,
            cmd_id=f"cut-{self.session_id.removeprefix('s-')}-{n}",  # unique per run
            session_id=self.session_id,
            start=start,
            end=end,
        )

    def first_chunk_seen(self, cmd: Command) -> bool:
        key = (self.device_id, upload_id_for(self.device_id, cmd.cmd_id))
        return bool(self.stack.wiretap.seen.chunks[key])
