"""What Mosquitto's persistence setting costs and what it keeps, all in one run.

The shipped config (``firmware_config/mosquitto.conf.template``) against the old setting
(``autosave_interval 30``, no debug log) and against saving on every change
(``autosave_on_changes true`` + ``autosave_interval 1``), on the same machine and broker binary:

1. 200 B QoS 1 events, device → broker → online server (paho, 16 in flight): msg/s.
2. 64 KiB QoS 1 chunks, the same path: msg/s.
3. 64 KiB chunks queued for an offline server (its persistent session): msg/s the device gets
   PUBACKs at while the queue grows (each measurement stops after ``CAP_S``).
4. kill -9 of the broker right after the last PUBACK of 200 events queued for the offline
   server, then a restart: how many of those acknowledged events the server still gets.

Run with ``make bench`` or ``.venv/bin/python bench/broker_persistence.py``.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rich.console import Console
from rich.table import Table

from simulators.broker import SERVER_USER, MosquittoBroker

console = Console()
# A measurement stops after this long (saving on every change is that slow).
CAP_S = 10.0
SHIPPED_LINES = ("autosave_on_changes false\n", "autosave_interval 1\n")


@dataclass(frozen=True)
class Setting:
    name: str
    on_changes: bool
    interval: int
    debug_log: bool

    def edit(self, text: str) -> str:
        for line in SHIPPED_LINES:
            assert line in text, f"the shipped template no longer has {line!r}"
        text = text.replace(
            SHIPPED_LINES[0], f"autosave_on_changes {str(self.on_changes).lower()}\n"
        )
        text = text.replace(SHIPPED_LINES[1], f"autosave_interval {self.interval}\n")
        if not self.debug_log:
            text = text.replace("log_type debug\n", "")
        return text


SETTINGS = [
    Setting("old: every 30 s, no debug log", False, 30, False),
    Setting("shipped: every 1 s, debug log", False, 1, True),
    Setting("every change, debug log", True, 1, True),
]


def _client(broker: MosquittoBroker, user: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(16)
    client.username_pw_set(user, broker.accounts.passwords[user])
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError(f"{user} could not connect")
    return client


class Server:
    """The server's persistent session: subscribed to up/#, counting what arrives."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.count = 0
        self._lock = threading.Condition()
        self.client = _client(broker, SERVER_USER)
        self.client.on_message = self._on_message
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe("classcam/v1/up/#", qos=1)
        if not done.wait(10):
            raise RuntimeError("no SUBACK")

    def _on_message(self, *args: object) -> None:
        with self._lock:
            self.count += 1
            self._lock.notify_all()

    def wait_for(self, n: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.count < n and time.monotonic() < deadline:
                self._lock.wait(0.1)
            return self.count

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(device: mqtt.Client, n: int, size: int, cap_s: float) -> tuple[int, float]:
    """Publish ``n`` QoS 1 messages; (how many were PUBACKed, seconds) when all are, or when
    ``cap_s`` has passed."""
    payload = b"x" * size
    began = time.monotonic()
    infos = [
        device.publish(f"classcam/v1/up/bench-dev/file/u/chunk/{i}", payload, 1) for i in range(n)
    ]
    for info in infos:
        left = cap_s - (time.monotonic() - began)
        if left <= 0:
            break
        with contextlib.suppress(RuntimeError):
            info.wait_for_publish(left)
    acked = sum(1 for info in infos if info.is_published())
    return acked, time.monotonic() - began


def _broker(work: Path, setting: Setting) -> MosquittoBroker:
    broker = MosquittoBroker(Path(tempfile.mkdtemp(dir=work)), edit_config=setting.edit)
    broker.add_account("bench-dev")
    broker.start()
    return broker


def online_rate(work: Path, setting: Setting, n: int, size: int) -> tuple[float, float]:
    """msg/s from the device's first publish to the server's last receipt; log bytes/msg."""
    broker = _broker(work, setting)
    try:
        server = Server(broker)
        device = _client(broker, "bench-dev")
        began = time.monotonic()
        acked, _ = _publish(device, n, size, cap_s=CAP_S)
        got = server.wait_for(acked, CAP_S)
        rate = got / (time.monotonic() - began)
        log_per_msg = broker.log_file.stat().st_size / max(1, got)
        device.disconnect()
        server.close()
        return rate, log_per_msg
    finally:
        broker.kill()


def queued_rate(work: Path, setting: Setting, n: int, size: int) -> tuple[float, int]:
    """PUBACKed msg/s while the offline server's queue grows; how many were queued."""
    broker = _broker(work, setting)
    try:
        Server(broker).close()
        device = _client(broker, "bench-dev")
        acked, seconds = _publish(device, n, size, cap_s=CAP_S)
        device.disconnect()
        return acked / seconds, acked
    finally:
        broker.kill()


def kept_after_kill(work: Path, setting: Setting, n: int = 200) -> int:
    """Events PUBACKed for the offline server, broker killed at once: how many survive."""
    broker = _broker(work, setting)
    try:
        Server(broker).close()
        device = _client(broker, "bench-dev")
        acked, _ = _publish(device, n, 200, cap_s=60)
        assert acked == n
        broker.kill()
        device.loop_stop()
        broker.start()
        server = Server(broker)
        # Every survivor is delivered at once on reconnect; a quiet second ends the count.
        got = -1
        while got != server.count:
            got = server.count
            server.wait_for(n, 1.0)
        server.close()
        return got
    finally:
        broker.kill()


def main() -> None:
    table = Table(title="Mosquitto persistence: cost and what a kill -9 keeps (same run)")
    for column in (
        "setting",
        "200 B online msg/s",
        "64 KiB online msg/s",
        "64 KiB queued msg/s",
        "log B/msg (64 KiB)",
        "kept of 200 after kill -9",
    ):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory(prefix="classcam-bench-") as tmp:
        work = Path(tmp)
        base: dict[str, float] = {}
        for setting in SETTINGS:
            console.print(f"measuring {setting.name} …")
            # Best of two: the disk and page cache make single runs vary by tens of percent.
            small = max(online_rate(work, setting, 5000, 200)[0] for _ in range(2))
            big, log_bytes = max(online_rate(work, setting, 2000, 65536) for _ in range(2))
            queued, count = max(queued_rate(work, setting, 4000, 65536) for _ in range(2))
            kept = kept_after_kill(work, setting)
            base = base or {"small": small, "big": big, "queued": queued}
            table.add_row(
                setting.name,
                f"{small:,.0f} ({small / base['small']:.2f}x)",
                f"{big:,.0f} ({big / base['big']:.2f}x)",
                f"{queued:,.0f} ({queued / base['queued']:.2f}x)"
                + ("" if count == 4000 else f" [{count} in {CAP_S:.0f} s]"),
                f"{log_bytes:,.0f}",
                f"{kept}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
