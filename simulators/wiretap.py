"""A witness on the broker for fault tests: it sees every message devices publish and can send
them commands, on an account of its own, so its view does not depend on the server's.

``WiretapBroker`` is the project's Mosquitto with one more account (``classcam-wiretap``) that
may read ``up/#`` and write ``down/#``; its client id is its username, as the broker may bind
them. ``Wiretap`` keeps what it saw (events by id, chunks per upload, presence) and waits on
conditions, so a test can act at an observable moment ("the first chunk is at the broker").
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common import topics
from common.clock import utc_now
from common.commands import Command, CommandType
from common.errors import ProtocolError
from common.schemas import Event, Status, decode
from simulators.broker import BrokerAccounts, MosquittoBroker

WIRETAP_USER = "classcam-wiretap"
T = TypeVar("T")


class WiretapBroker(MosquittoBroker):
    """Mosquitto with classcam's config and ACL, plus the wiretap's account."""

    def __init__(
        self,
        workdir: Path | None = None,
        accounts: BrokerAccounts | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(workdir, accounts, port)
        self._accounts_lock = threading.Lock()
        if WIRETAP_USER not in self.accounts.passwords:
            self.accounts.add(WIRETAP_USER)

    def add_account(self, username: str, password: str | None = None) -> str:
        """As the base class; safe to call from several provisioning threads at once."""
        with self._accounts_lock:
            return super().add_account(username, password)

    def render_config(self) -> Path:
        config = super().render_config()
        with (self.workdir / "acl").open("a") as acl:
            acl.write(
                f"\nuser {WIRETAP_USER}\ntopic read {topics.UP}/#\ntopic write {topics.DOWN}/#\n"
            )
        return config


@dataclass
class Seen:
    """Everything the wiretap has seen, by kind."""

    events: dict[str, Event] = field(default_factory=dict)
    event_copies: Counter[str] = field(default_factory=Counter)
    statuses: list[tuple[float, Status]] = field(default_factory=list)
    chunks: Counter[tuple[str, str]] = field(default_factory=Counter)  # (device, upload)
    inits: Counter[tuple[str, str]] = field(default_factory=Counter)
    fins: Counter[tuple[str, str]] = field(default_factory=Counter)


class Wiretap:
    """A paho client on the wiretap account: records ``up/#``, publishes commands."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.seen = Seen()
        self._changed = threading.Condition()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=WIRETAP_USER, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(WIRETAP_USER, broker.accounts.passwords[WIRETAP_USER])
        self.client.reconnect_delay_set(1, 2)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.connected.set()
        self.client.on_disconnect = lambda *a: self.connected.clear()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("the wiretap could not subscribe")

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(f"{topics.UP}/#", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            up = topics.parse_up(msg.topic)
        except Exception:  # not ours to judge: the server counts bad topics
            return
        payload = bytes(msg.payload)
        with self._changed:
            key = (up.device_id, up.upload_id or "")
            if up.kind is topics.UpKind.EVENT:
                try:
                    event = decode(Event, payload)
                except ProtocolError:
                    return
                self.seen.events[event.event_id] = event
                self.seen.event_copies[event.event_id] += 1
            elif up.kind is topics.UpKind.STATUS and payload:
                try:
                    self.seen.statuses.append((time.monotonic(), decode(Status, payload)))
                except ProtocolError:
                    return
            elif up.kind is topics.UpKind.FILE_CHUNK:
                self.seen.chunks[key] += 1
            elif up.kind is topics.UpKind.FILE_INIT:
                self.seen.inits[key] += 1
            elif up.kind is topics.UpKind.FILE_FIN:
                self.seen.fins[key] += 1
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str = "") -> T:
        """Wait until ``predicate()`` (read under the wiretap's lock) is truthy; return it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"wiretap: timed out waiting for {what or predicate}")
                self._changed.wait(min(left, 0.1))

    def events_of(self, device_id: str) -> list[Event]:
        with self._changed:
            return [e for e in self.seen.events.values() if e.device_id == device_id]

    def replies(self, cmd_id: str) -> list[Event]:
        with self._changed:
            return [e for e in self.seen.events.values() if e.cmd_id == cmd_id]

    def online_since(self, device_id: str, since: float) -> bool:
        """Has ``device_id`` said ``online`` since monotonic time ``since``?"""
        return any(
            at >= since and s.device_id == device_id and s.state.value == "online"
            for at, s in self.seen.statuses
        )

    def command(self, device_id: str, type_: CommandType, **fields: Any) -> Command:
        """A command to send (and perhaps send again): a fresh ``cmd_id`` unless given."""
        fields.setdefault("cmd_id", f"{type_.value[:4]}-{uuid.uuid4().hex[:12]}")
        return Command(type=type_, issued_at=utc_now(), **fields)

    def send(self, device_id: str, cmd: Command) -> None:
        """Publish ``cmd`` at QoS 1; a broker that is down loses nothing here: send again."""
        info = self.client.publish(topics.cmd(device_id), cmd.to_bytes(), qos=1)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
