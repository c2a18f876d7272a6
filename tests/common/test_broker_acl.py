"""The broker config and ACL in firmware_config/ do what DESIGN.md §2 says, against a real
Mosquitto running the shipped template: identities bound, ACLs enforced and refusals logged,
TLS verified by the agent, acknowledged messages kept across a kill -9."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import load_config
from edge_agent.uplink import MqttLink
from ingest_server.scheduler import make_scheduler_client
from ingest_server.settings import Settings
from ingest_server.tls_certs import make_broker_certificates
from simulators.broker import SCHEDULER_USER, SERVER_USER, MosquittoBroker
from simulators.harness import ServerProcess, provision_device, set_toml_values

SERVER_CLIENT_ID = "classcam-ingest-host"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


class Watcher:
    """A paho client that records what it receives and every disconnect."""

    def __init__(
        self,
        broker: MosquittoBroker,
        user: str,
        client_id: str | None = None,
        *,
        password: str | None = None,
        clean_start: bool = False,
        protocol: int = mqtt.MQTTv5,
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects = 0
        self.connack: Any = None
        self.suback: list[Any] = []
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id if client_id is not None else user,
            protocol=protocol,
        )
        if user:
            self.client.username_pw_set(
                user, password if password is not None else broker.accounts.passwords[user]
            )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = self._on_subscribe
        kwargs: dict[str, Any] = {}
        if protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            kwargs = {"clean_start": clean_start, "properties": props}
        self.client.connect(broker.host, broker.port, **kwargs)
        self.client.loop_start()
        assert self.answered.wait(5), "no CONNACK"

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, rc: Any, *a: Any):
        self.connack = rc
        if not rc.is_failure:
            self.connected.set()
        self.answered.set()

    def _on_disconnect(self, *args: Any) -> None:
        self.disconnects += 1
        self.connected.clear()

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, codes: Any, *a: Any):
        self.suback = list(codes)
        self.subscribed.set()

    def subscribe(self, topic: str) -> list[Any]:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(5)
        return self.suback

    def publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        return info

    def topics(self) -> list[str]:
        return [t for t, _ in list(self.messages)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Watcher]]:
    made: list[Watcher] = []
    yield made
    for watcher in made:
        watcher.close()


def _watch(made: list[Watcher], *args: Any, **kwargs: Any) -> Watcher:
    watcher = Watcher(*args, **kwargs)
    made.append(watcher)
    return watcher


def test_device_writes_only_its_own_subtree_and_server_reads_it(
    mosquitto: MosquittoBroker, clients: list[Watcher]
):
    mosquitto.add_account("dev-1")
    mosquitto.add_account("dev-2")
    server = _watch(clients, mosquitto, SERVER_USER, SERVER_CLIENT_ID)
    server.subscribe("$share/ingest/classcam/v1/up/#")
    dev = _watch(clients, mosquitto, "dev-1")
    dev.publish("classcam/v1/up/dev-1/event", b"mine")
    dev.publish("classcam/v1/up/dev-2/event", b"spoofed")
    dev.publish("classcam/v1/down/dev-2/cmd", b"not mine")
    marker = _watch(clients, mosquitto, "dev-2")
    marker.publish("classcam/v1/up/dev-2/event", b"end")
    wait_until(lambda: len(server.messages) >= 2, what="the marker")
    assert server.messages == [
        ("classcam/v1/up/dev-1/event", b"mine"),
        ("classcam/v1/up/dev-2/event", b"end"),
    ]


def test_a_refused_publish_is_in_the_broker_log(mosquitto: MosquittoBroker, clients: list[Watcher]):
    mosquitto.add_account("dev-1")
    dev = _watch(clients, mosquitto, "dev-1")
    dev.publish("classcam/v1/up/dev-2/event", b"spoofed")
    line = wait_until(
        lambda: next(
            (
                ln
                for ln in mosquitto.log_file.read_text(errors="replace").splitlines()
                if "Denied PUBLISH from dev-1" in ln and "classcam/v1/up/dev-2/event" in ln
            ),
            None,
        ),
        what="the refusal in the broker log",
    )
    assert "q1" in line


def test_a_device_cannot_read_another_devices_commands(
    mosquitto: MosquittoBroker, clients: list[Watcher]
):
    mosquitto.add_account("dev-1")
    mosquitto.add_account("dev-2")
    thief = _watch(clients, mosquitto, "dev-1")
    # Mosquitto 2.0 grants both subscriptions; its ACL filters each message on delivery.
    thief.subscribe("classcam/v1/down/dev-2/#")
    thief.subscribe("classcam/v1/#")
    owner = _watch(clients, mosquitto, "dev-2")
    owner.subscribe("classcam/v1/down/dev-2/#")
    scheduler = _watch(clients, mosquitto, SCHEDULER_USER)
    scheduler.publish("classcam/v1/down/dev-2/cmd", b"for dev-2 only")
    scheduler.publish("classcam/v1/down/dev-1/cmd", b"for dev-1")
    wait_until(lambda: owner.messages and thief.messages, what="both deliveries")
    assert owner.messages == [("classcam/v1/down/dev-2/cmd", b"for dev-2 only")]
    assert thief.messages == [("classcam/v1/down/dev-1/cmd", b"for dev-1")]


def test_the_scheduler_login_cannot_forge_upload_or_event_acks(
    mosquitto: MosquittoBroker, clients: list[Watcher]
):
    """Stolen scheduler credentials must not forge a ``complete`` (the agent would delete a
    clip the server never stored) nor an event ack: the scheduler writes only commands and
    timetables, the ingest consumer alone answers uploads and events."""
    mosquitto.add_account("dev-1")
    device = _watch(clients, mosquitto, "dev-1")
    device.subscribe("classcam/v1/down/dev-1/#")
    scheduler = _watch(clients, mosquitto, SCHEDULER_USER)
    for suffix in ("ack", "event_ack", "other"):
        scheduler.publish(f"classcam/v1/down/dev-1/{suffix}", b"forged")
    scheduler.publish("classcam/v1/down/dev-1/cmd", b"command")
    scheduler.publish("classcam/v1/down/dev-1/schedule", b"timetable")
    server = _watch(clients, mosquitto, SERVER_USER, SERVER_CLIENT_ID)
    server.publish("classcam/v1/down/dev-1/ack", b"real ack")
    server.publish("classcam/v1/down/dev-1/event_ack", b"real event ack")
    # The broker routed every scheduler publish (each acknowledged) before the server's: a
    # forged one would reach the device before the server's last message.
    wait_until(lambda: ("classcam/v1/down/dev-1/event_ack", b"real event ack") in device.messages)
    assert device.messages == [
        ("classcam/v1/down/dev-1/cmd", b"command"),
        ("classcam/v1/down/dev-1/schedule", b"timetable"),
        ("classcam/v1/down/dev-1/ack", b"real ack"),
        ("classcam/v1/down/dev-1/event_ack", b"real event ack"),
    ]


def test_the_server_login_cannot_forge_commands_or_timetables(
    mosquitto: MosquittoBroker, clients: list[Watcher]
):
    """The ingest consumer answers uploads and events and nothing else: stolen consumer
    credentials must not open or close a session, order a cut, or rewrite a timetable."""
    mosquitto.add_account("dev-1")
    device = _watch(clients, mosquitto, "dev-1")
    device.subscribe("classcam/v1/down/dev-1/#")
    server = _watch(clients, mosquitto, SERVER_USER, SERVER_CLIENT_ID)
    for suffix in ("cmd", "schedule", "other"):
        server.publish(f"classcam/v1/down/dev-1/{suffix}", b"forged")
    server.publish("classcam/v1/down/dev-1/ack", b"real ack")
    server.publish("classcam/v1/down/dev-1/event_ack", b"real event ack")
    wait_until(lambda: ("classcam/v1/down/dev-1/event_ack", b"real event ack") in device.messages)
    assert device.messages == [
        ("classcam/v1/down/dev-1/ack", b"real ack"),
        ("classcam/v1/down/dev-1/event_ack", b"real event ack"),
    ]


def test_a_device_login_cannot_take_the_servers_client_id(
    mosquitto: MosquittoBroker, clients: list[Watcher]
):
    mosquitto.add_account("dev-1")
    server = _watch(clients, mosquitto, SERVER_USER, SERVER_CLIENT_ID)
    server.subscribe("classcam/v1/up/#")
    intruder = _watch(clients, mosquitto, "dev-1", SERVER_CLIENT_ID, clean_start=True)
    assert intruder.connected.is_set()  # it gets in, but as dev-1, not as the server
    intruder.publish("classcam/v1/up/dev-1/event", b"after the intruder")
    wait_until(lambda: server.messages, what="a message for the server")
    assert server.disconnects == 0 and server.connected.is_set()
    assert "already connected, closing old connection" not in mosquitto.log_file.read_text()


def test_the_running_server_is_not_kicked_by_a_device_using_its_client_id(
    tmp_path: Path, mosquitto: MosquittoBroker, clients: list[Watcher]
):
    mosquitto.add_account("dev-1")
    server = ServerProcess(tmp_path / "server", mosquitto)
    server.start()
    try:
        found = re.search(r"subscribed to \S+ as (\S+)", server.log_file.read_text())
        assert found, server.tail_log()
        intruder = _watch(clients, mosquitto, "dev-1", found.group(1), clean_start=True)
        assert intruder.connected.is_set()
        log = mosquitto.log_file.read_text()
        # The broker takes a client id over while it handles the CONNECT, before its CONNACK.
        assert "as dev-1 (p5, c1" in log
        assert "already connected, closing old connection" not in log
        assert server.log_file.read_text().count("subscribed to") == 1
    finally:
        server.stop()


def test_a_device_login_cannot_take_another_devices_session_and_queued_command(
    mosquitto: MosquittoBroker, clients: list[Watcher]
):
    mosquitto.add_account("dev-1")
    mosquitto.add_account("dev-2")
    victim = _watch(clients, mosquitto, "dev-2")
    victim.subscribe("classcam/v1/down/dev-2/#")
    victim.close()
    clients.remove(victim)
    scheduler = _watch(clients, mosquitto, SCHEDULER_USER)
    scheduler.publish("classcam/v1/down/dev-2/cmd", b"cut window 1")
    # A clean start under dev-2's client id would throw dev-2's session and queue away.
    _watch(clients, mosquitto, "dev-1", "dev-2", clean_start=True)
    back = _watch(clients, mosquitto, "dev-2")
    wait_until(lambda: back.messages, what="the queued command")
    assert back.messages == [("classcam/v1/down/dev-2/cmd", b"cut window 1")]


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_anonymous_and_wrong_password_are_refused(
    mosquitto: MosquittoBroker, clients: list[Watcher], protocol: int
):
    mosquitto.add_account("dev-1")
    anonymous = _watch(clients, mosquitto, "", "anon-1", protocol=protocol)
    wrong = _watch(clients, mosquitto, "dev-1", password="wrong", protocol=protocol)
    right = _watch(clients, mosquitto, "dev-1", protocol=protocol)
    assert anonymous.connack.is_failure and not anonymous.connected.is_set()
    assert wrong.connack.is_failure and not wrong.connected.is_set()
    assert right.connected.is_set()


def test_a_packet_over_max_packet_size_is_refused(
    mosquitto: MosquittoBroker, clients: list[Watcher]
):
    mosquitto.add_account("dev-1")
    server = _watch(clients, mosquitto, SERVER_USER, SERVER_CLIENT_ID)
    server.subscribe("classcam/v1/up/#")
    dev = _watch(clients, mosquitto, "dev-1")
    dev.client.publish("classcam/v1/up/dev-1/file/u1/chunk/0", b"x" * 1_200_000, qos=1)
    wait_until(lambda: dev.disconnects, what="the broker to drop the oversized sender")
    again = _watch(clients, mosquitto, "dev-1")
    again.publish("classcam/v1/up/dev-1/event", b"small")
    wait_until(lambda: server.messages, what="the small message")
    assert server.topics() == ["classcam/v1/up/dev-1/event"]


def test_a_device_away_keeps_more_queued_commands_than_mosquittos_default(
    mosquitto: MosquittoBroker, clients: list[Watcher]
):
    """The queue limits are global in Mosquitto 2.0: what the server's account needs, a
    device's gets too. 1,500 commands (the default limit is 1,000) all wait for it."""
    mosquitto.add_account("dev-1")
    device = _watch(clients, mosquitto, "dev-1")
    device.subscribe("classcam/v1/down/dev-1/#")
    device.close()
    clients.remove(device)
    scheduler = _watch(clients, mosquitto, SCHEDULER_USER)
    infos = [
        scheduler.client.publish("classcam/v1/down/dev-1/cmd", str(i).encode(), qos=1)
        for i in range(1500)
    ]
    for info in infos:
        info.wait_for_publish(10)
    back = _watch(clients, mosquitto, "dev-1")
    wait_until(lambda: len(back.messages) >= 1500, 20, "the queued commands")
    assert [int(p) for _, p in back.messages] == list(range(1500))


# -- TLS: the agent's own link, configured the way provisioning does it ----------------------


def _tls_link(
    tmp_path: Path,
    broker: MosquittoBroker,
    ca_file: Path,
    host: str = "127.0.0.1",
    device_id: str = "cam-tls",
) -> MqttLink:
    device = provision_device(tmp_path / "devices" / host, device_id, broker)
    config_path = device.config_path
    tls = {"host": host, "port": broker.tls_port, "tls": True, "ca_file": str(ca_file)}
    config_path.write_text(set_toml_values(config_path.read_text(), {"broker": tls}))
    config = load_config(config_path)
    assert config.broker.tls and config.broker.port == broker.tls_port
    return MqttLink(config, config.broker_password())


def _connects(link: MqttLink) -> bool:
    """Whether the link connects; False once paho has given up its first attempt."""
    failed = threading.Event()
    link.client.on_connect_fail = lambda *a: failed.set()
    link.start()
    try:
        wait_until(lambda: link.connected.is_set() or failed.is_set(), 15, "a verdict")
        return link.connected.is_set()
    finally:
        link.stop()


def test_the_agent_connects_over_tls_to_the_broker_its_ca_signed(
    tmp_path: Path, mosquitto: MosquittoBroker
):
    assert _connects(_tls_link(tmp_path, mosquitto, mosquitto.ca_file))


def test_the_agent_refuses_a_broker_certificate_from_another_ca(
    tmp_path: Path, mosquitto: MosquittoBroker
):
    other = make_broker_certificates(tmp_path / "other-ca", ["localhost"], ["127.0.0.1"])
    assert not _connects(_tls_link(tmp_path, mosquitto, other.ca_cert))
    log = mosquitto.log_file.read_text(errors="replace")
    assert "unknown ca" in log, log[-2000:]


def test_the_agent_refuses_a_broker_certificate_for_another_host(tmp_path: Path):
    broker = MosquittoBroker(
        tmp_path / "broker", tls_hosts=("elsewhere.example",), tls_ips=("127.0.0.1",)
    )
    broker.start()
    try:
        # Signed by the CA the agent trusts; it names 127.0.0.1 but not "localhost", though
        # both reach the same listener.
        assert _connects(_tls_link(tmp_path, broker, broker.ca_file, host="127.0.0.1"))
        assert not _connects(_tls_link(tmp_path, broker, broker.ca_file, host="localhost"))
    finally:
        broker.stop()


def _scheduler_publishes_over_tls(broker: MosquittoBroker, ca_file: Path) -> bool:
    settings = Settings(
        mqtt_host="127.0.0.1",
        mqtt_port=broker.tls_port,
        mqtt_tls=True,
        mqtt_ca_file=ca_file,
        mqtt_scheduler_password=broker.accounts.passwords[SCHEDULER_USER],
    )

    async def publish() -> bool:
        try:
            async with make_scheduler_client(settings) as client:
                await client.publish("classcam/v1/down/dev-1/cmd", b"over tls", qos=1)
                return True
        except aiomqtt.MqttError:
            return False

    return asyncio.run(asyncio.wait_for(publish(), 15))


def test_the_scheduler_reaches_the_broker_over_tls_only_with_its_ca(
    tmp_path: Path, mosquitto: MosquittoBroker, clients: list[Watcher]
):
    mosquitto.add_account("dev-1")
    device = _watch(clients, mosquitto, "dev-1")
    device.subscribe("classcam/v1/down/dev-1/#")
    other = make_broker_certificates(tmp_path / "other-ca", ["localhost"], ["127.0.0.1"])
    assert not _scheduler_publishes_over_tls(mosquitto, other.ca_cert)
    assert _scheduler_publishes_over_tls(mosquitto, mosquitto.ca_file)
    wait_until(lambda: device.messages, what="the command sent over TLS")
    assert device.messages == [("classcam/v1/down/dev-1/cmd", b"over tls")]


# -- persistence ------------------------------------------------------------------------------


def test_messages_acknowledged_while_the_server_was_away_survive_a_broker_kill(
    mosquitto: MosquittoBroker, clients: list[Watcher]
):
    mosquitto.add_account("dev-1")
    server = _watch(clients, mosquitto, SERVER_USER, SERVER_CLIENT_ID)
    server.subscribe("classcam/v1/up/#")
    server.close()
    clients.remove(server)
    dev = _watch(clients, mosquitto, "dev-1")
    sent = [f"event {i}".encode() for i in range(50)]
    infos = [dev.client.publish("classcam/v1/up/dev-1/event", p, qos=1) for p in sent]
    for info in infos:
        info.wait_for_publish(5)
    assert all(info.is_published() for info in infos)  # PUBACKed: the device may forget them
    db = mosquitto.workdir / "data" / "mosquitto.db"

    def version() -> tuple[int, int]:
        stat = db.stat() if db.exists() else None
        return (stat.st_ino, stat.st_mtime_ns) if stat else (0, 0)

    # Two saves after the last PUBACK, so one of them began after it. Under the old
    # `autosave_interval 30` none comes for 30 s and the kill below loses all 50.
    first = version()
    second = wait_until(lambda: (v := version()) != first and v, 10, "a save")
    wait_until(lambda: version() != second, 10, "a second save")
    dev.close()
    clients.remove(dev)
    mosquitto.kill()
    mosquitto.start()
    back = _watch(clients, mosquitto, SERVER_USER, SERVER_CLIENT_ID)
    wait_until(lambda: len(back.messages) >= len(sent), 10, "the queued events")
    assert [p for _, p in back.messages] == sent
