"""Start a real MQTT broker for tests and the demo, configured from ``firmware_config/``.

``MosquittoBroker`` runs the Mosquitto binary with the project's own config template and ACL, on
a free loopback port, so a test can restart it, stop it and rely on the same ACLs as production.
``EmbeddedBroker`` runs amqtt (MQTT 3.1.1 only) for machines without Mosquitto: a demo fallback.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ingest_server.broker_config import BrokerPaths, render_broker_config
from ingest_server.settings import SCHEDULER_USER, SERVER_USER
from ingest_server.tls_certs import make_broker_certificates

CONFIG_DIR = Path(__file__).resolve().parent.parent / "firmware_config"
# The operator console (simulators/operator.py) watches devices beside a running server, so it
# needs a login (and so a client id) of its own. Test-only: its ACL lines are added to the test
# broker's copy of the shipped ACL, never to the shipped file.
OPERATOR_USER = "classcam-operator"
OPERATOR_ACL = f"""
# Test-only account added by simulators/broker.py (not in firmware_config/mosquitto.acl).
user {OPERATOR_USER}
topic read classcam/v1/up/#
topic write classcam/v1/down/#
"""
# Accounts every local broker has: the server's two connections and the operator console.
SERVICE_USERS = (SERVER_USER, SCHEDULER_USER, OPERATOR_USER)


def ingest_worker_acl(username: str) -> str:
    """The ACL lines of one more ingest worker, as docs/deployment.md says to write them: the
    server account's block of the shipped ACL under another user name."""
    shipped = (CONFIG_DIR / "mosquitto.acl").read_text()
    block = shipped[shipped.index(f"user {SERVER_USER}\n") :].split("\n\n")[0]
    return "\n" + block.replace(f"user {SERVER_USER}\n", f"user {username}\n") + "\n"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


@dataclass
class BrokerAccounts:
    """Usernames and passwords the broker accepts: the server account plus one per device."""

    passwords: dict[str, str] = field(default_factory=dict)

    def add(self, username: str, password: str | None = None) -> str:
        password = password or os.urandom(12).hex()
        self.passwords[username] = password
        return password


def accepts_login(host: str, port: int, username: str, password: str, timeout: float = 5.0) -> bool:
    """Whether the broker at ``host:port`` takes this login (client id = username, as the
    shipped ACL binds them, on a clean session); a broker that does not answer does not."""
    import paho.mqtt.client as mqtt

    answers: list[bool] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.on_connect = lambda c, data, flags, reason, props: answers.append(not reason.is_failure)
    try:
        client.connect(host, port, keepalive=10, clean_start=True)
        deadline = time.monotonic() + timeout
        while not answers and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    except OSError:
        return False
    finally:
        client.disconnect()
    return answers == [True]


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL if it will not go: a graceful stop that always ends."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def kill_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL: what a crash or a power cut does."""
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


class LocalBroker:
    """What both brokers share: a child process on a free loopback port, its accounts, its log."""

    protocol_versions: tuple[str, ...] = ()
    log_name = "broker.log"

    def __init__(
        self, workdir: Path | None, accounts: BrokerAccounts | None, port: int | None, prefix: str
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=prefix))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.accounts = accounts or BrokerAccounts()
        for user in SERVICE_USERS:
            if user not in self.accounts.passwords:
                self.accounts.add(user)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.workdir / self.log_name

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), so persistent sessions are saved."""
        stop_process(self.process)
        self.process = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL): what a crash or power cut does."""
        kill_process(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail_log(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MosquittoBroker(LocalBroker):
    """A Mosquitto process on a free loopback port with classcam's config, ACL and accounts."""

    protocol_versions = ("3.1.1", "5")
    log_name = "mosquitto.log"

    def __init__(
        self,
        workdir: Path | None = None,
        accounts: BrokerAccounts | None = None,
        port: int | None = None,
        binary: str | None = None,
        tls_hosts: tuple[str, ...] = ("localhost",),
        tls_ips: tuple[str, ...] = ("127.0.0.1",),
        edit_config: Callable[[str], str] | None = None,
        extra_acl: str = "",
    ) -> None:
        self.binary = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.binary).exists():
            raise FileNotFoundError("mosquitto is not installed (make test installs it with apt)")
        super().__init__(workdir, accounts, port, "classcam-mosquitto-")
        # Devices dial the TLS listener; the server and the test clients the plain one.
        self.tls_port = free_port()
        self.tls_hosts = list(tls_hosts)
        self.tls_ips = list(tls_ips)
        # Benchmarks compare settings by editing the rendered shipped config.
        self.edit_config = edit_config
        # ACL lines after the shipped ones (the accounts of more ingest workers).
        self.extra_acl = extra_acl

    @property
    def ca_file(self) -> Path:
        """The CA devices trust for this broker's TLS listener (made at the first start)."""
        return self.workdir / "tls" / "ca.crt"

    def add_account(self, username: str, password: str | None = None) -> str:
        """Add a broker account; takes effect at the next (re)start or ``reload()``."""
        password = self.accounts.add(username, password)
        if self.process:
            self._write_passwords()
            self.reload()
        return password

    def _write_passwords(self) -> Path:
        path = self.workdir / "passwords"
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
        # One mosquitto_passwd run hashes the whole plain-text file in place (-U): a process
        # per account took minutes for a fleet of ten thousand.
        path.write_text(
            "".join(f"{user}:{password}\n" for user, password in self.accounts.passwords.items())
        )
        subprocess.run(["mosquitto_passwd", "-U", str(path)], check=True, capture_output=True)
        return path

    def render_config(self) -> Path:
        data_dir = self.workdir / "data"
        data_dir.mkdir(exist_ok=True)
        acl = self.workdir / "acl"
        acl.write_text((CONFIG_DIR / "mosquitto.acl").read_text() + OPERATOR_ACL + self.extra_acl)
        tls_dir = self.workdir / "tls"
        if not (tls_dir / "server.crt").exists():
            make_broker_certificates(tls_dir, self.tls_hosts, self.tls_ips)
        config = render_broker_config(
            BrokerPaths(
                port=self.port,
                bind=self.host,
                tls_port=self.tls_port,
                tls_bind=self.host,
                cafile=tls_dir / "ca.crt",
                certfile=tls_dir / "server.crt",
                keyfile=tls_dir / "server.key",
                data_dir=data_dir,
                password_file=self._write_passwords(),
                acl_file=acl,
                log_file=self.log_file,
                # As root Mosquitto drops to user `mosquitto`, which cannot read a test's
                # private files.
                run_user=getpass.getuser(),
            )
        )
        if self.edit_config is not None:
            config = self.edit_config(config)
        path = self.workdir / "mosquitto.conf"
        path.write_text(config)
        return path

    def start(self) -> None:
        if self.process and self.process.poll() is None:
            return
        config = self.render_config()
        self.process = subprocess.Popen(
            [self.binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_for_port(self.host, self.port)
            wait_for_port(self.host, self.tls_port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.tail_log()}") from None

    def reload(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(1)  # SIGHUP re-reads password and ACL files
            time.sleep(0.2)
            # Under load the broker can take longer to listen again: a client connecting at
            # once was refused (test_device_word, in make test's PostgreSQL pass).
            try:
                wait_for_port(self.host, self.port)
                wait_for_port(self.host, self.tls_port)
            except TimeoutError:
                raise RuntimeError(f"mosquitto did not come back: {self.tail_log()}") from None


class EmbeddedBroker(LocalBroker):
    """amqtt in a child process: MQTT 3.1.1 only, no ``$share``, no ACLs. Demo fallback only."""

    protocol_versions = ("3.1.1",)
    log_name = "amqtt.log"

    def __init__(
        self,
        workdir: Path | None = None,
        accounts: BrokerAccounts | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(workdir, accounts, port, "classcam-amqtt-")

    def add_account(self, username: str, password: str | None = None) -> str:
        password = self.accounts.add(username, password)
        if self.process:
            self.restart()
        return password

    def _write_passwords(self) -> Path:
        from pwdlib.hashers.argon2 import Argon2Hasher  # amqtt's own dependency

        hasher = Argon2Hasher()
        path = self.workdir / "passwords"
        path.write_text(
            "".join(
                f"{user}:{hasher.hash(password)}\n"
                for user, password in self.accounts.passwords.items()
            )
        )
        return path

    def start(self) -> None:
        if self.process and self.process.poll() is None:
            return
        passwords = self._write_passwords()
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "simulators.embedded_broker",
                    "--port",
                    str(self.port),
                    "--password-file",
                    str(passwords),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(self.host, self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"amqtt did not start: {self.log_file.read_text()[-2000:]}"
            ) from None


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()
