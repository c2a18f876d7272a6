"""Nothing the broker handed the server is lost (issue 8, finding 1), on a real Mosquitto.

The consumer acknowledges a QoS 1 message to the broker only after the flush that made its effect
durable has committed; a message that keeps failing while the database answers is kept in
``dead_letters`` (then acknowledged); while the database is away nothing is acknowledged and
everything is processed once it is back.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import (
    WAIT,
    Harness,
    batched_processor,
    consumer_settings,
    make_upload,
    quiet_heartbeat,
    wait_for,
)
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from common import topics
from common.clock import utc_now
from common.schemas import Event, EventType
from ingest_server.consumer import ConsumerThread
from ingest_server.device_messages import DeviceMessages
from ingest_server.ingest import IngestProcessor, Outgoing
from ingest_server.models import DeadLetter, DeviceEvent, Upload
from ingest_server.settings import Settings
from simulators.broker import SERVER_USER, MosquittoBroker

HERE = Path(__file__).resolve().parent


def durable_settings(broker: MosquittoBroker, harness: Harness, **extra: object) -> Settings:
    """Retries kept short, so that a failing message is dead-lettered within a test's wait."""
    return consumer_settings(
        broker,
        harness,
        "ingest-durable",
        ingest_retry_base_s=0.05,
        ingest_retry_cap_s=0.2,
        **extra,
    )


class DevicePublisher:
    """A device's broker login that publishes at QoS 1 and waits for the broker's PUBACK."""

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

    def event(self, type_: EventType = EventType.ERROR) -> Event:
        event = Event(
            event_id=f"ev-{uuid.uuid4().hex[:20]}",
            device_id=self.device_id,
            type=type_,
            at=utc_now(),
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


def _upload_row(harness: Harness, upload_id: str) -> Upload | None:
    with harness.sessions() as db:
        return db.get(Upload, (upload_id, "dev-1"))


def _ranges(harness: Harness, upload_id: str) -> list[tuple[int, int]] | None:
    row = _upload_row(harness, upload_id)
    return None if row is None else row.ranges


def test_messages_received_by_a_consumer_that_dies_before_commit_are_processed_once_after_restart(
    mosquitto: MosquittoBroker,
    device: DevicePublisher,
    harness: Harness,
    tmp_path: Path,
    key: Ed25519PrivateKey,
) -> None:
    upload = make_upload(tmp_path / "d", key, "dev-1", "up-crash", size=20 * 4096)
    settings = durable_settings(mosquitto, harness)
    with ConsumerThread(settings, harness.processor):
        device.publish(upload.init_topic(), upload.init_payload)
        wait_for(lambda: _upload_row(harness, "up-crash") is not None, what="init")
    # The server is down: the chunks wait in its persistent session at the broker.
    for offset, data in upload.chunks:
        device.publish(upload.chunk_topic(offset), data)
    env = {
        **os.environ,
        "CLASSCAM_DATA_DIR": str(harness.settings.data_dir),
        "CLASSCAM_DATABASE_URL": harness.settings.database_url,
        "CLASSCAM_EVIDENCE_DIR": str(harness.store.root),
        "CLASSCAM_MQTT_HOST": mosquitto.host,
        "CLASSCAM_MQTT_PORT": str(mosquitto.port),
        "CLASSCAM_MQTT_PASSWORD": mosquitto.accounts.passwords[SERVER_USER],
        "CLASSCAM_MQTT_CLIENT_ID": "ingest-durable",
        "CLASSCAM_SHARED_GROUP": "ingest",
    }
    crashing = subprocess.Popen(
        [sys.executable, str(HERE / "crashing_consumer.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    handled = 0
    try:
        assert crashing.stdout is not None
        for line in crashing.stdout:
            handled += line.startswith("handled ")
            if line.strip() == "flushing":
                break  # received and handled, not yet committed
    finally:
        crashing.kill()  # SIGKILL: no flush, no goodbye
        crashing.wait()
    assert handled >= 1
    assert _ranges(harness, "up-crash") == []

    with ConsumerThread(settings, harness.processor):
        wait_for(
            lambda: _ranges(harness, "up-crash") == [(0, upload.manifest.size)],
            what="every chunk after the restart",
        )
    row = _upload_row(harness, "up-crash")
    assert row is not None
    assert (row.chunks_received, row.chunks_duplicate) == (len(upload.chunks), 0)


class PoisonProcessor(IngestProcessor):
    """Raises on every delivery of one chunk, as a bug would."""

    poison_offset = 3 * 4096
    failures = 0

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        if topic.endswith(f"/chunk/{self.poison_offset}"):
            self.failures += 1
            raise RuntimeError("boom: a bug in the handler")
        return super().handle(topic, payload)


class CountingProcessor(IngestProcessor):
    """Counts the deliveries it failed to handle."""

    failures = 0

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        try:
            return super().handle(topic, payload)
        except Exception:
            self.failures += 1
            raise


def test_a_poison_message_lands_in_dead_letters_and_later_ones_are_processed(
    mosquitto: MosquittoBroker,
    device: DevicePublisher,
    harness: Harness,
    tmp_path: Path,
    key: Ed25519PrivateKey,
) -> None:
    processor = PoisonProcessor(harness.sessions, harness.store, harness.settings, harness.clock)
    upload = make_upload(tmp_path / "d", key, "dev-1", "up-poison", size=8 * 4096)
    settings = durable_settings(mosquitto, harness, ingest_max_attempts=3)
    with ConsumerThread(settings, processor) as thread:
        device.publish(upload.init_topic(), upload.init_payload)
        for offset, data in upload.chunks:
            device.publish(upload.chunk_topic(offset), data)
        expected = [
            (0, PoisonProcessor.poison_offset),
            (PoisonProcessor.poison_offset + 4096, 8 * 4096),
        ]
        wait_for(
            lambda: _ranges(harness, "up-poison") == expected,
            what="every chunk but the poison one",
        )
        wait_for(lambda: _dead_letters(harness) != [], what="the dead letter")
        assert thread.consumer is not None
        # Not a database error: retrying cannot help, and backoff on the single worker would
        # hold every other device's messages; kept on the first attempt.
        assert thread.consumer.counters["retries"] == 0
    letters = _dead_letters(harness)
    assert len(letters) == 1
    letter = letters[0]
    assert letter.topic == upload.chunk_topic(PoisonProcessor.poison_offset)
    assert letter.payload == dict(upload.chunks)[PoisonProcessor.poison_offset]
    assert letter.attempts == 1 and "boom" in letter.error
    assert letter.first_at <= letter.last_at
    assert processor.failures == 1


class LockedProcessor(IngestProcessor):
    """Finds the database locked on every delivery of one event topic's message."""

    failures = 0

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        if b"locked-for-ever" in payload:
            self.failures += 1
            raise OperationalError("UPDATE ...", {}, sqlite3.OperationalError("database is locked"))
        return super().handle(topic, payload)


def test_a_database_error_is_retried_with_backoff_before_it_is_dead_lettered(
    mosquitto: MosquittoBroker, device: DevicePublisher, harness: Harness
) -> None:
    processor = LockedProcessor(harness.sessions, harness.store, harness.settings, harness.clock)
    settings = durable_settings(mosquitto, harness, ingest_max_attempts=3)
    with ConsumerThread(settings, processor) as thread:
        device.publish(topics.event("dev-1"), b'{"note": "locked-for-ever"}')
        wait_for(lambda: _dead_letters(harness) != [], what="the dead letter")
        assert thread.consumer is not None
        assert thread.consumer.counters["retries"] == 2
    (letter,) = _dead_letters(harness)
    assert letter.attempts == 3 and "database is locked" in letter.error
    assert processor.failures == 3


def _dead_letters(harness: Harness) -> list[DeadLetter]:
    with harness.sessions() as db:
        return list(db.scalars(select(DeadLetter)))


def test_messages_are_not_dropped_while_the_database_is_away_and_are_processed_after(
    mosquitto: MosquittoBroker, device: DevicePublisher, pg_harness: Harness, pg_url: str
) -> None:
    harness = pg_harness
    fleet = DeviceMessages(harness.sessions, 90.0, harness.clock)
    processor = CountingProcessor(
        harness.sessions,
        harness.store,
        harness.settings,
        harness.clock,
        device_messages=fleet.handle,
    )
    schema = pg_url.rsplit("%3D", 1)[1]
    admin = harness.engine
    settings = durable_settings(mosquitto, harness, ingest_max_attempts=2)
    with ConsumerThread(settings, processor):
        first = device.event()
        wait_for(lambda: _event_ids(harness) == {first.event_id}, what="first event")
        with admin.begin() as conn:  # the database goes away
            conn.execute(text(f'ALTER SCHEMA "{schema}" RENAME TO "{schema}_away"'))
        try:
            later = [device.event() for _ in range(3)]
            wait_for(lambda: processor.failures >= 3, what="failed attempts")
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'ALTER SCHEMA "{schema}_away" RENAME TO "{schema}"'))
        wait_for(
            lambda: _event_ids(harness) == {first.event_id, *(e.event_id for e in later)},
            what="the events held back while the database was away",
        )
    assert _dead_letters(harness) == []


def _event_ids(harness: Harness) -> set[str]:
    with harness.sessions() as db:
        return set(db.scalars(select(DeviceEvent.event_id)))


def test_a_steady_trickle_still_lets_the_consumer_say_it_has_caught_up(
    mosquitto: MosquittoBroker, device: DevicePublisher, harness: Harness
) -> None:
    """Heartbeat sweeps wait for ``caught_up``; a fleet whose messages never leave a quiet gap
    must not hold them off for ever, nor may the group commit's linger: heartbeats batched as
    in the server, the consumer says it has caught up while the trickle still runs, and then
    groups them in fewer commits than messages."""
    fleet = DeviceMessages(harness.sessions, 90.0, harness.clock, batched=True)
    processor = batched_processor(harness, fleet)
    settings = durable_settings(mosquitto, harness, ingest_quiet_s=60.0, flush_linger_s=0.05)
    stop = threading.Event()

    def trickle() -> None:  # ~40 heartbeats a second: a fleet of 1,200 at a 30 s period
        seq = 0
        while not stop.wait(0.025):
            seq += 1
            beat = quiet_heartbeat(device.device_id, utc_now(), seq)
            device.publish(topics.heartbeat(device.device_id), beat.to_bytes())

    sender = threading.Thread(target=trickle, daemon=True)
    with ConsumerThread(settings, processor) as thread:
        consumer = thread.consumer
        assert consumer is not None
        assert not consumer.caught_up()  # no quiet gap yet, nothing seen
        sender.start()
        try:
            wait_for(consumer.caught_up, timeout=10.0, what="caught up under a trickle")
            handled, flushes = consumer.counters["handled"], consumer.counters["flushes"]
            wait_for(
                lambda: consumer.counters["handled"] >= handled + 40,
                what="the trickle still running after the catch-up",
            )
            assert consumer.caught_up()
            more_flushes = consumer.counters["flushes"] - flushes
            assert more_flushes < consumer.counters["handled"] - handled  # lingering again
        finally:
            stop.set()
            sender.join(WAIT)
    assert not consumer.caught_up()  # disconnected: no longer


class HeldProcessor(IngestProcessor):
    """Handles nothing until released, as a slow disk or database would."""

    release = threading.Event()

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        self.release.wait(WAIT)
        return super().handle(topic, payload)


def test_at_most_mqtt_max_inflight_messages_are_handed_over_unacknowledged(
    mosquitto: MosquittoBroker, device: DevicePublisher, harness: Harness
) -> None:
    fleet = DeviceMessages(harness.sessions, 90.0, harness.clock)
    processor = HeldProcessor(
        harness.sessions,
        harness.store,
        harness.settings,
        harness.clock,
        device_messages=fleet.handle,
    )
    processor.release = threading.Event()
    settings = durable_settings(mosquitto, harness, mqtt_max_inflight=5)
    with ConsumerThread(settings, processor) as thread:
        consumer = thread.consumer
        assert consumer is not None
        sent = [device.event() for _ in range(30)]  # the broker takes them all
        wait_for(lambda: consumer.counters["received"] >= 5, what="the first five")
        time.sleep(0.5)  # room for the broker to overrun the bound, if it would
        assert consumer.counters["received"] == 5  # MQTT 5 ReceiveMaximum holds the rest
        processor.release.set()
        wait_for(lambda: _event_ids(harness) == {e.event_id for e in sent}, what="all thirty")
    assert consumer.counters["acked"] == 30
