"""A forger with a ``Presence`` looks alive to the server as an agent does, on a real Mosquitto
with classcam's ACL, through a link that can drop: retained ``online`` on every connect, the
``offline`` will when the link drops, heartbeats that say what it claims to record, and
``offline`` at a clean stop. A power cut takes it down as abruptly as an agent's (the will, no
more heartbeats or answers) and power brings it back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.subscribeoptions import SubscribeOptions

from common import topics
from common.commands import Command, CommandType
from common.heartbeat import Heartbeat
from common.schemas import Status, StatusState, decode
from simulators.broker import SCHEDULER_USER, SERVER_USER, BrokerAccounts, MosquittoBroker
from simulators.forger import ForgedClip, Forger, Presence
from simulators.netlink import ShapedLink
from simulators.replay_stack import DeviceRig, ReplayStack

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
        self.heard: list[tuple[str, str]] = []  # (topic, what) in the order they came
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
        # Commands come from the scheduler's login (the ingest login may not send them).
        self.scheduler = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=SCHEDULER_USER, protocol=mqtt.MQTTv5
        )
        self.scheduler.username_pw_set(SCHEDULER_USER, broker.accounts.passwords[SCHEDULER_USER])
        self.scheduler.connect(broker.host, broker.port)
        self.scheduler.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == topics.status(DEVICE):
            status = decode(Status, bytes(msg.payload))
            self.statuses.append(status)
            self.retained.append(bool(msg.retain))
            self.heard.append((msg.topic, status.state))
        elif msg.topic == topics.heartbeat(DEVICE):
            self.beats.append(decode(Heartbeat, bytes(msg.payload)))
            self.heard.append((msg.topic, "beat"))
        else:
            self.heard.append((msg.topic, ""))

    def send_cut(self, cmd_id: str) -> None:
        start = datetime.now(UTC) - timedelta(minutes=5)
        cmd = Command(
            cmd_id=cmd_id,
            type=CommandType.CUT,
            issued_at=datetime.now(UTC),
            session_id="s-1",
            start=start,
            end=start + timedelta(seconds=30),
        )
        self.scheduler.publish(topics.cmd(DEVICE), cmd.to_bytes(), qos=1).wait_for_publish(5)

    def states(self) -> list[StatusState]:
        return [s.state for s in list(self.statuses)]

    def close(self) -> None:
        for client in (self.client, self.scheduler):
            client.disconnect()
            client.loop_stop()


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


def test_a_power_cut_takes_a_forged_device_down_and_power_brings_it_back(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """What ``ReplayStack`` does to a forger's device on ``power_off``/``power_on``: the device
    vanishes mid-upload (the broker says offline for it; no heartbeat, no answer, no threads
    left), then comes back as a rebooted camera (online, heartbeats from seq 1, cuts answered)."""
    link = ShapedLink(broker.host, broker.port).start()

    def answer(cmd: Command) -> ForgedClip:
        assert cmd.start is not None and cmd.end is not None
        return ForgedClip(b"not a clip" * 100, cmd.start, cmd.end, duration_s=30.0, frames=300)

    forger = Forger(
        DEVICE,
        broker.accounts.passwords[DEVICE],
        Ed25519PrivateKey.generate(),
        host=link.host,
        port=link.port,
        answer=answer,
        upload_id_for=lambda cmd_id: f"up-{cmd_id}",
        presence=Presence(heartbeat_s=BEAT_S, firmware="classcam-agent/0.1.0", disk=tmp_path),
    )
    stack = ReplayStack(SimpleNamespace(), tmp_path / "replay", speed=1.0)  # type: ignore[arg-type]
    rig = DeviceRig(
        SimpleNamespace(device_id=DEVICE, forger=object()),  # type: ignore[arg-type]
        SimpleNamespace(),  # type: ignore[arg-type]
        link,
        SimpleNamespace(),  # type: ignore[arg-type]
        tmp_path / "camera-plan.json",
        forger=forger,
    )
    view = ServerView(broker)

    def heard(topic: str, what: str = "") -> Callable[[], int]:
        return lambda: sum(1 for t, w in view.heard if t == topic and (w == what or not what))

    init = topics.file_init(DEVICE, "up-c1")
    try:
        forger.start()
        wait_for(lambda: len(view.beats) >= 2, what="heartbeats")
        view.send_cut("c1")
        wait_for(heard(init), what="the first cut answered")  # now waiting for an ack

        cut_at = time.monotonic()
        stack.power_off(rig)
        assert time.monotonic() - cut_at < 3.0  # not the upload's 30 s wait for its ack
        assert not rig.powered and rig.power_cuts == 1 and not forger.powered
        wait_for(lambda: view.states()[-1:] == [StatusState.OFFLINE], what="the will")
        assert view.statuses[-1].at is None  # the broker's words: the device said nothing
        alive = [t.name for t in threading.enumerate() if DEVICE in t.name]
        assert alive == []  # no heartbeat thread, no command worker, no network loop
        assert forger.errors == []  # a cut is not the forger's failure
        assert forger.uploads == {"up-c1": "abandoned"}

        view.send_cut("c2")  # the device is off: nobody hears it
        beats_before = len(view.beats)
        stack.power_on(rig)
        assert rig.powered and forger.powered
        wait_for(lambda: view.states()[-1:] == [StatusState.ONLINE], what="online again")
        assert view.statuses[-1].at is not None and view.retained[-1]
        first = wait_for(lambda: view.beats[beats_before:], what="a heartbeat again")[0]
        assert first.seq == 1  # a rebooted device counts again, as the agent does
        view.send_cut("c3")
        wait_for(heard(topics.file_init(DEVICE, "up-c3")), what="cuts answered again")
        assert heard(topics.file_init(DEVICE, "up-c2"))() == 0
        assert [c.cmd_id for c in forger.commands] == ["c1", "c3"]

        will = view.heard.index((topics.status(DEVICE), StatusState.OFFLINE))
        back = view.heard.index((topics.status(DEVICE), StatusState.ONLINE), will)
        assert (topics.heartbeat(DEVICE), "beat") not in view.heard[will:back]

        forger.stop()
        wait_for(lambda: view.states()[-1:] == [StatusState.OFFLINE], what="offline at stop")
        assert view.statuses[-1].at is not None
    finally:
        forger.stop()
        view.close()
        link.stop()
