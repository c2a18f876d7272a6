"""What a device says cannot stall ingest nor rewrite its presence (issue 8, adversarial review).

* A NaN, infinite or absurd clock offset in a heartbeat or status is a counted refusal, not an
  exception: the consumer's single worker used to retry it with backoff and dead-letter it,
  holding every device's messages meanwhile.
* A device that comes back while the server is live is online from when we heard it, whatever
  offset it claims (it could hide an hour's outage by claiming its clock ran an hour ahead).
* ``caught_up`` is not claimed right after a batch that took longer than the quiet time: the
  broker sends the rest of a backlog only after our acks.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import pytest
from ingest_helpers import WAIT, Harness, consumer_settings, quiet_heartbeat, wait_for
from sqlalchemy import select

from common import topics
from common.clock import VirtualClock
from common.schemas import MAX_CLOCK_OFFSET_S, Event, EventType, Status, StatusState
from ingest_server.consumer import ConsumerThread
from ingest_server.device_messages import DeviceMessages
from ingest_server.ingest import IngestProcessor, Outgoing
from ingest_server.models import DeadLetter, DeviceEvent, DeviceHealth, PresenceChange
from simulators.broker import MosquittoBroker

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
HOSTILE_OFFSETS = ["NaN", "Infinity", "-Infinity", "1e300", "-1e12", str(MAX_CLOCK_OFFSET_S + 1)]


def heartbeat_json(offset: str, at: str = "2026-11-02T09:00:00Z", seq: int = 1) -> bytes:
    """A heartbeat as raw JSON, so that values pydantic would never emit can be sent."""
    fields = (
        f'"device_id":"dev-1","at":"{at}","seq":{seq},"uptime_s":1,"firmware":"x",'
        '"recording":true,"spool_bytes":0,"outbox_pending":0,"disk_free_bytes":1,'
        '"disk_total_bytes":2,"bytes_sent_today":0,"bytes_sent_month":0,'
        f'"clock_offset_s":{offset}'
    )
    return ("{" + fields + "}").encode()


HOSTILE_STATUSES = [
    b'{"device_id":"dev-1","state":"online","clock_offset_s":NaN}',
    b'{"device_id":"dev-1","state":"online","at":NaN}',
    b'{"device_id":"dev-1","state":"online","at":"0001-01-01T00:00:00Z"}',
    b'{"device_id":"dev-1","state":"offline","at":"9999-12-31T23:59:59Z"}',
]


def test_hostile_numbers_in_heartbeats_and_statuses_are_refused_without_raising(
    harness: Harness,
) -> None:
    for live in (True, False):  # a live server and one draining a backlog take different paths
        fleet = DeviceMessages(
            harness.sessions, 90.0, harness.clock, caught_up=lambda live=live: live
        )
        for offset in HOSTILE_OFFSETS:
            assert (
                fleet.handle(topics.parse_up(topics.heartbeat("dev-1")), heartbeat_json(offset))
                == []
            )
        assert fleet.counters["bad_heartbeat"] == len(HOSTILE_OFFSETS)
        # A valid offset at its bound on a date at the edge of the calendar: no overflow either.
        edge = heartbeat_json(str(MAX_CLOCK_OFFSET_S), at="0001-01-01T00:00:00Z")
        fleet.handle(topics.parse_up(topics.heartbeat("dev-1")), edge)
        for payload in HOSTILE_STATUSES:
            fleet.handle(topics.parse_up(topics.status("dev-1")), payload)
        assert fleet.counters["bad_status"] == 2
    with harness.sessions() as db:
        row = db.get(DeviceHealth, "dev-1")
        assert row is not None and row.heartbeat is not None
        assert "NaN" not in row.heartbeat and "Infinity" not in row.heartbeat


class DevicePublisher:
    def __init__(self, broker: MosquittoBroker, device_id: str) -> None:
        self.device_id = device_id
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(device_id, broker.accounts.passwords[device_id])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT)
        assert info.is_published()

    def event(self) -> Event:
        event = Event(
            event_id=f"ev-{uuid.uuid4().hex[:20]}",
            device_id=self.device_id,
            type=EventType.ERROR,
            at=datetime.now(UTC),
        )
        self.publish(topics.event(self.device_id), event.to_bytes())
        return event

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device(mosquitto: MosquittoBroker) -> Iterator[DevicePublisher]:
    mosquitto.add_account("dev-1")
    publisher = DevicePublisher(mosquitto, "dev-1")
    try:
        yield publisher
    finally:
        publisher.close()


def test_nan_heartbeats_do_not_hold_up_the_next_event(
    mosquitto: MosquittoBroker, device: DevicePublisher, harness: Harness
) -> None:
    fleet = DeviceMessages(harness.sessions, 90.0, harness.clock)
    processor = IngestProcessor(
        harness.sessions,
        harness.store,
        harness.settings,
        harness.clock,
        device_messages=fleet.handle,
    )
    # The shipped retry policy: before, each hostile message cost 5 attempts and ~3 s of backoff.
    with ConsumerThread(consumer_settings(mosquitto, harness, "ingest-word"), processor) as thread:
        for seq, offset in enumerate(HOSTILE_OFFSETS):
            device.publish(topics.heartbeat("dev-1"), heartbeat_json(offset, seq=seq))
        for payload in HOSTILE_STATUSES:
            device.publish(topics.status("dev-1"), payload)
        started = time.monotonic()
        event = device.event()
        wait_for(lambda: event.event_id in _event_ids(harness), what="the event after them")
        elapsed = time.monotonic() - started
        consumer = thread.consumer
        assert consumer is not None
        assert consumer.counters["retries"] == 0
        assert consumer.counters["handle_failed"] == 0
    assert fleet.counters["bad_heartbeat"] == len(HOSTILE_OFFSETS)
    assert fleet.counters["bad_status"] == 2
    with harness.sessions() as db:
        assert list(db.scalars(select(DeadLetter))) == []
    assert elapsed < 5.0, elapsed  # milliseconds normally; before, seconds per message


def _event_ids(harness: Harness) -> set[str]:
    with harness.sessions() as db:
        return set(db.scalars(select(DeviceEvent.event_id)))


def _beat(fleet: DeviceMessages, at: datetime, offset: float, seq: int) -> None:
    beat = quiet_heartbeat("dev-1", at, seq, recording=True, clock_offset_s=offset)
    fleet.handle(topics.parse_up(topics.heartbeat("dev-1")), beat.to_bytes())


def _will(fleet: DeviceMessages) -> None:
    will = Status(device_id="dev-1", state=StatusState.OFFLINE)
    fleet.handle(topics.parse_up(topics.status("dev-1")), will.to_bytes())


def _changes(harness: Harness) -> list[tuple[datetime, bool]]:
    with harness.sessions() as db:
        rows = db.scalars(select(PresenceChange).order_by(PresenceChange.id))
        return [(c.at, c.online) for c in rows]


@pytest.mark.parametrize("via", ["heartbeat", "status"])
def test_a_device_back_while_the_server_is_live_cannot_claim_it_came_back_earlier(
    harness: Harness, via: str
) -> None:
    clock = VirtualClock(T0)
    fleet = DeviceMessages(harness.sessions, 60.0, clock, caught_up=lambda: True)
    # Via status, the lie is set up beforehand: its beats state an hour's offset (consistently
    # with its clock, so they are stamped right), and the status is read through that offset.
    before = 3599.0 if via == "status" else 0.0
    _beat(fleet, clock.now() + timedelta(seconds=before), before, 1)  # online at 09:00
    clock.advance(30)
    _beat(fleet, clock.now() + timedelta(seconds=before), before, 2)  # last seen 09:00:30
    clock.advance(5)
    _will(fleet)  # the broker noticed it gone
    clock.advance(3600)  # away for the whole class
    back = clock.now()  # 10:00:35; its word will put its return at 09:00:36
    if via == "status":
        online = Status(device_id="dev-1", state=StatusState.ONLINE, at=back)
        fleet.handle(topics.parse_up(topics.status("dev-1")), online.to_bytes())
    else:
        _beat(fleet, back, 3599.0, 3)
    assert _changes(harness) == [
        (T0, True),
        (T0 + timedelta(seconds=30), False),
        (back, True),
    ]


def test_in_a_backlog_a_claimed_time_is_never_before_an_offline_heard_live(
    harness: Harness,
) -> None:
    clock = VirtualClock(T0)
    live = threading.Event()
    live.set()
    fleet = DeviceMessages(harness.sessions, 60.0, clock, caught_up=live.is_set)
    _beat(fleet, clock.now(), 0.0, 1)
    clock.advance(30)
    _beat(fleet, clock.now(), 0.0, 2)  # last seen 09:00:30
    clock.advance(5)
    _will(fleet)  # heard live at 09:00:35
    heard = clock.now()
    live.clear()  # the server was down; now it drains a backlog
    clock.advance(3600)
    _beat(fleet, clock.now(), 3602.0, 3)  # its word: back at 09:00:33, before we heard it go
    changes = _changes(harness)
    assert changes[1] == (T0 + timedelta(seconds=30), False)
    assert changes[2][1] is True and changes[2][0] >= heard
    # An honest backlog keeps its own time: a beat sent at 10:30, drained at 11:00.
    clock.advance(5)
    _will(fleet)
    clock.advance(3600)
    sent = clock.now() - timedelta(minutes=30)
    _beat(fleet, sent, 0.0, 4)
    assert _changes(harness)[-1] == (sent, True)


class SlowProcessor(IngestProcessor):
    """Takes its time over each message, as a batch of commits on a slow disk does."""

    seconds = 0.35

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        time.sleep(self.seconds)
        return []


def test_caught_up_waits_for_quiet_after_a_slow_batch_is_acknowledged(
    mosquitto: MosquittoBroker, device: DevicePublisher, harness: Harness
) -> None:
    """The broker holds a backlog of 4 for the consumer's persistent session; handling them
    takes 1.4 s, longer than the quiet time. Right after their acks the broker may still hold
    more (it sends the next window only after our acks): not yet caught up."""
    settings = consumer_settings(mosquitto, harness, "ingest-word", ingest_quiet_s=1.0)
    ConsumerThread(
        settings, IngestProcessor(harness.sessions, harness.store, harness.settings, harness.clock)
    ).start().stop()
    for _ in range(4):
        device.event()  # queued by the broker for the stopped consumer
    processor = SlowProcessor(harness.sessions, harness.store, harness.settings, harness.clock)
    thread = ConsumerThread(settings, processor).start()
    try:
        consumer = thread.consumer
        assert consumer is not None
        wait_for(lambda: consumer.counters["acked"] >= 4, what="the backlog acknowledged")
        acked_at = time.monotonic()
        threading.Event().wait(0.05)  # the worker finishes its loop turn
        assert not consumer.caught_up()
        assert time.monotonic() - acked_at < settings.ingest_quiet_s  # the check was in time
        wait_for(consumer.caught_up, what="caught up once quiet after the acks")
        assert consumer.counters["handled"] == 4
    finally:
        thread.stop()
