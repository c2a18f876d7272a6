"""A forger with a ``Presence`` looks alive to the server as an agent does, on a real Mosquitto
with classcam's ACL, through a link that can drop: retained ``online`` on every connect, the
``offline`` will when the link drops, heartbeats that say what it claims to record, and
``offline`` at a clean stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.subscribeoptions import SubscribeOptions

from common import topics
from common.heartbeat import Heartbeat
from common.schemas import Status, StatusState, decode
from simulators.broker import SERVER_USER, BrokerAccounts, MosquittoBroker
from simulators.forger import Forger, Presence
from simulators.netlink import ShapedLink

DEVICE = "cam-forged"
BEAT_S = 0.1


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


class ServerView:
    """What the ingest login hears of the device: its statuses and heartbeats, decoded with
    the server's own models."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.statuses: list[Status] = []
        self.beats: list[Heartbeat] = []
        self.retained: list[bool] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=SERVER_USER, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(SERVER_USER, broker.accounts.passwords[SERVER_USER])
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        # Retain as published: the flag tells a retained status from a passing one.
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        self.client.subscribe(f"{topics.UP}/{DEVICE}/#", options=options)
        assert self._subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == topics.status(DEVICE):
            self.statuses.append(decode(Status, bytes(msg.payload)))
            self.retained.append(bool(msg.retain))
        elif msg.topic == topics.heartbeat(DEVICE):
            self.beats.append(decode(Heartbeat, bytes(msg.payload)))

    def states(self) -> list[StatusState]:
        return [s.state for s in list(self.statuses)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    accounts = BrokerAccounts()
    accounts.add(DEVICE)
    broker = MosquittoBroker(tmp_path / "broker", accounts)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_forger_with_a_presence_looks_like_a_live_camera(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    link = ShapedLink(broker.host, broker.port).start()
    presence = Presence(
        heartbeat_s=BEAT_S, firmware="classcam-agent/0.1.0", disk=tmp_path, spool_bytes_per_s=1e6
    )
    forger = Forger(
        DEVICE,
        broker.accounts.passwords[DEVICE],
        Ed25519PrivateKey.generate(),
        host=link.host,
        port=link.port,
        clock_offset_s=1.5,
        presence=presence,
    )
    view = ServerView(broker)
    try:
        forger.start()
        wait_for(lambda: StatusState.ONLINE in view.states(), what="online status")
        assert view.retained[0] and view.statuses[0].firmware == presence.firmware

        idle = wait_for(lambda: list(view.beats), what="a heartbeat")[0]
        assert not idle.recording and idle.session_id is None and idle.spool_bytes == 0
        assert idle.clock_offset_s == 1.5 and idle.disk_total_bytes > 0

        forger.claim_recording("s-1")
        recording = wait_for(
            lambda: [b for b in view.beats if b.recording and b.spool_bytes > 0],
            what="a heartbeat while recording",
        )[0]
        assert recording.session_id == "s-1"
        forger.claim_recording(None)
        after = wait_for(
            lambda: [b for b in view.beats if b.seq > recording.seq and not b.recording],
            what="a heartbeat after the class",
        )[0]
        assert after.session_id is None and after.spool_bytes >= recording.spool_bytes
        seqs = [b.seq for b in view.beats]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

        # The link drops: the broker says offline for it (the will); back, it says online.
        link.cut()
        wait_for(lambda: view.states()[-1:] == [StatusState.OFFLINE], what="the will")
        assert view.statuses[-1].at is None  # the broker's words, stamped by no one
        link.restore()
        # paho waits its reconnect delay (1 s, doubling while the link refused it).
        wait_for(lambda: view.states()[-1:] == [StatusState.ONLINE], 30, "online again")

        forger.stop()
        wait_for(lambda: view.states()[-1:] == [StatusState.OFFLINE], what="offline at stop")
        assert view.statuses[-1].at is not None  # said by the device itself
        assert all(view.retained)  # every status is the device's standing word
    finally:
        forger.stop()
        view.close()
        link.stop()
