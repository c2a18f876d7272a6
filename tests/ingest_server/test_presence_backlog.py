"""Presence by when it happened (issue 8, finding 7), on a real Mosquitto.

While the server is down, one camera keeps sending heartbeats and another drops (the broker
publishes its will), stays away longer than the heartbeat timeout and comes back. When the
server returns and drains its backlog, the offline period shows at the devices' own times, and
no sweep marks the camera that never stopped offline.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import paho.mqtt.client as mqtt
from ingest_helpers import WAIT, Harness, consumer_settings, quiet_heartbeat, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import select

from common import topics
from common.clock import SystemClock, utc_now
from common.schemas import Status, StatusState
from ingest_server.consumer import ConsumerThread
from ingest_server.device_messages import DeviceMessages
from ingest_server.ingest import IngestProcessor
from ingest_server.models import DeviceHealth, PresenceChange
from simulators.broker import MosquittoBroker

TIMEOUT_S = 2.0
BEAT_S = 0.3


class Camera:
    """A device login with a will, sending heartbeats on its own clock (offset 0)."""

    def __init__(self, broker: MosquittoBroker, device_id: str) -> None:
        self.broker = broker
        self.device_id = device_id
        self.seq = 0
        self.sent: list[datetime] = []
        self.client = self._connect()

    def _connect(self) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv5
        )
        client.username_pw_set(self.device_id, self.broker.accounts.passwords[self.device_id])
        will = Status(device_id=self.device_id, state=StatusState.OFFLINE)
        client.will_set(topics.status(self.device_id), will.to_bytes(), qos=1, retain=True)
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        return client

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT)
        assert info.is_published()

    def beat(self) -> datetime:
        at = utc_now()
        self.seq += 1
        beat = quiet_heartbeat(self.device_id, at, self.seq, clock_offset_s=0.0)
        self._publish(topics.heartbeat(self.device_id), beat.to_bytes())
        self.sent.append(at)
        return at

    def drop(self) -> None:
        """Gone without a goodbye: the broker publishes the will."""
        with_will = ReasonCode(PacketTypes.DISCONNECT, identifier=4)
        self.client.disconnect(reasoncode=with_will)
        self.client.loop_stop()

    def come_back(self) -> datetime:
        self.client = self._connect()
        at = utc_now()
        status = Status(device_id=self.device_id, state=StatusState.ONLINE, at=at)
        self._publish(topics.status(self.device_id), status.to_bytes(), retain=True)
        return at

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_an_outage_while_the_server_was_down_keeps_its_device_times_and_no_sweep_invents_one(
    mosquitto: MosquittoBroker, harness: Harness
) -> None:
    for name in ("cam-a", "cam-b"):
        mosquitto.add_account(name)
    settings = consumer_settings(
        mosquitto, harness, "ingest-presence", heartbeat_timeout_s=TIMEOUT_S
    )
    fleet = DeviceMessages(harness.sessions, TIMEOUT_S, SystemClock())
    processor = IngestProcessor(
        harness.sessions, harness.store, settings, SystemClock(), device_messages=fleet.handle
    )
    a, b = Camera(mosquitto, "cam-a"), Camera(mosquitto, "cam-b")
    stop_b = threading.Event()

    beating_cameras = [b]

    def keep_beating() -> None:
        while not stop_b.wait(BEAT_S):
            for camera in list(beating_cameras):
                camera.beat()

    beating = threading.Thread(target=keep_beating, daemon=True)
    try:
        with ConsumerThread(settings, processor):
            a.beat()
            b.beat()
            wait_for(
                lambda: _statuses(harness) == {"cam-a": "online", "cam-b": "online"}, what="up"
            )
        # The server is down from here on.
        beating.start()
        last_seen_a = max(a.beat() for _ in range(3))
        a.drop()
        time.sleep(TIMEOUT_S + 1.0)  # the outage itself, longer than the timeout
        back_a = a.come_back()
        beating_cameras.append(a)
        time.sleep(TIMEOUT_S)  # the server stays down past another timeout

        restarted = ConsumerThread(settings, processor)
        fleet.caught_up = lambda: (  # what the server wires: the consumer says when
            restarted.consumer is not None and restarted.consumer.caught_up()
        )
        swept: list[str] = []
        swept += fleet.sweep_timeouts()  # the scheduler's first tick, before ingest connects
        restarted.start()
        try:
            deadline = time.monotonic() + 3 * TIMEOUT_S
            while time.monotonic() < deadline:  # sweeps every tick while the backlog drains
                swept += fleet.sweep_timeouts()
                time.sleep(0.05)
            wait_for(
                lambda: _statuses(harness) == {"cam-a": "online", "cam-b": "online"},
                what="both online after the drain",
                detail=lambda: (_statuses(harness), _changes(harness), swept),
            )
        finally:
            restarted.stop()
    finally:
        stop_b.set()
        if beating.is_alive():
            beating.join(5)
        a.close()
        b.close()

    changes = _changes(harness)
    assert "cam-b" not in swept
    assert [online for _, online, _ in changes["cam-b"]] == [True]  # never offline
    a_changes = changes["cam-a"]
    assert [online for _, online, _ in a_changes] == [True, False, True]
    offline_at, online_at = a_changes[1][0], a_changes[2][0]
    # Stamped by the device's times (heartbeats say offset 0), not by when they were processed.
    assert abs((offline_at - last_seen_a).total_seconds()) < 0.01
    assert abs((online_at - back_a).total_seconds()) < 0.01
    assert online_at - offline_at > timedelta(seconds=TIMEOUT_S)


def _statuses(harness: Harness) -> dict[str, str]:
    with harness.sessions() as db:
        return {r.device_id: r.status for r in db.scalars(select(DeviceHealth))}


def _changes(harness: Harness) -> dict[str, list[tuple[datetime, bool, str]]]:
    out: dict[str, list[tuple[datetime, bool, str]]] = {"cam-a": [], "cam-b": []}
    with harness.sessions() as db:
        for row in db.scalars(select(PresenceChange).order_by(PresenceChange.id)):
            out[row.device_id].append((row.at, row.online, row.source))
    return out
