"""One poison heartbeat or status must not hold the group commit (and every device's acks).

Batched (the running server), statuses and heartbeats are applied together in ``flush``. A
message whose applying raises anything but a database error (a bug, a value nobody foresaw) is
kept in ``dead_letters`` and the rest of its batch commits, so the consumer acknowledges them
all; a database error still fails the whole flush, keeps every message and acknowledges nothing
until the commit succeeds. Tested on real SQLite and PostgreSQL, and through the real consumer
on a real Mosquitto.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import pytest
from ingest_helpers import (
    WAIT,
    Harness,
    batched_processor,
    consumer_settings,
    quiet_heartbeat,
    wait_for,
)
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from common import topics
from common.heartbeat import Heartbeat
from common.schemas import Status, StatusState
from ingest_server.consumer import ConsumerThread
from ingest_server.device_health import HealthBatch, HealthRow
from ingest_server.device_messages import DeviceMessages, _Said
from ingest_server.models import DeadLetter, DeviceHealth, FeedEvent, PresenceChange
from ingest_server.settings import Settings
from simulators.broker import MosquittoBroker

POISON_SEQ = 13


class PoisonFleet(DeviceMessages):
    """Raises ``TypeError``, as a bug would, on the heartbeat numbered ``POISON_SEQ``, after its
    presence change was recorded (row, feed entry); with ``database_away`` set, raises the
    database's error on every heartbeat instead."""

    database_away = False

    def _change(
        self,
        batch: HealthBatch,
        row: HealthRow,
        online: bool,
        at: datetime,
        source: str,
        device_at: datetime | None = None,
    ) -> bool:
        came_online = super()._change(batch, row, online, at, source, device_at)
        if json_seq(row.heartbeat) == POISON_SEQ:
            raise TypeError("boom: a bug in applying a heartbeat")
        return came_online

    def _heartbeat(self, batch: HealthBatch, said: _Said, beat: Heartbeat) -> bool:
        if self.database_away:
            raise OperationalError("UPDATE ...", {}, sqlite3.OperationalError("disk I/O error"))
        return super()._heartbeat(batch, said, beat)


def json_seq(heartbeat_json: str | None) -> int | None:
    return None if heartbeat_json is None else Heartbeat.model_validate_json(heartbeat_json).seq


def beat(device_id: str, seq: int) -> bytes:
    return quiet_heartbeat(device_id, datetime.now(UTC), seq).to_bytes()


def send_heartbeat(fleet: DeviceMessages, device_id: str, seq: int) -> bytes:
    payload = beat(device_id, seq)
    assert fleet.handle(topics.parse_up(topics.heartbeat(device_id)), payload) == []
    return payload


def health(harness: Harness) -> dict[str, DeviceHealth]:
    with harness.sessions() as db:
        return {row.device_id: row for row in db.scalars(select(DeviceHealth))}


def dead_letters(harness: Harness) -> list[DeadLetter]:
    with harness.sessions() as db:
        return list(db.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def online_feed(harness: Harness) -> list[str]:
    with harness.sessions() as db:
        payloads = db.scalars(
            select(FeedEvent.payload).where(FeedEvent.kind == "device_online")
        ).all()
    return sorted(p.split('"device_id": "')[1].split('"')[0] for p in payloads)


def presence_changes(harness: Harness, device_id: str) -> int:
    with harness.sessions() as db:
        return db.scalar(select(func.count()).where(PresenceChange.device_id == device_id)) or 0


def check_poison_batch(harness: Harness) -> None:
    fleet = PoisonFleet(harness.sessions, 90.0, harness.clock, batched=True)
    send_heartbeat(fleet, "dev-1", 1)
    poison = send_heartbeat(fleet, "dev-p", POISON_SEQ)  # dev-p's first word: a new row
    send_heartbeat(fleet, "dev-p", POISON_SEQ + 1)  # the next from it is fine
    status = Status(device_id="dev-2", state=StatusState.ONLINE)
    fleet.handle(topics.parse_up(topics.status("dev-2")), status.to_bytes())
    send_heartbeat(fleet, "dev-3", 1)

    fleet.flush()  # does not raise: the poison one is set aside

    rows = health(harness)
    assert {d: r.status for d, r in rows.items()} == {
        "dev-1": "online",
        "dev-p": "online",
        "dev-2": "online",
        "dev-3": "online",
    }
    # The poison heartbeat's effects are gone with its savepoint; the next one took effect.
    assert json_seq(rows["dev-p"].heartbeat) == POISON_SEQ + 1
    assert presence_changes(harness, "dev-p") == 1
    assert online_feed(harness) == ["dev-1", "dev-2", "dev-3", "dev-p"]
    (letter,) = dead_letters(harness)
    assert letter.topic == topics.heartbeat("dev-p")
    assert letter.payload == poison
    assert letter.error.startswith("TypeError: boom")
    assert letter.attempts == 1 and letter.first_at <= letter.last_at
    assert letter.replayed_at is None
    assert fleet.counters["dead_lettered"] == 1
    assert fleet.counters["heartbeats"] == 3 and fleet.counters["status_online"] == 1

    fleet.flush()  # nothing kept: the poison heartbeat is not tried again
    assert len(dead_letters(harness)) == 1
    send_heartbeat(fleet, "dev-1", 2)
    fleet.flush()
    assert json_seq(health(harness)["dev-1"].heartbeat) == 2


def test_a_poison_heartbeat_is_dead_lettered_and_the_rest_of_its_batch_commits(
    harness: Harness,
) -> None:
    check_poison_batch(harness)


def test_a_poison_heartbeat_is_dead_lettered_on_postgresql_too(pg_harness: Harness) -> None:
    check_poison_batch(pg_harness)


def test_a_database_error_fails_the_whole_flush_and_keeps_every_message(
    harness: Harness,
) -> None:
    fleet = PoisonFleet(harness.sessions, 90.0, harness.clock, batched=True)
    fleet.database_away = True
    send_heartbeat(fleet, "dev-1", 1)
    send_heartbeat(fleet, "dev-2", 1)
    for _ in range(2):  # the consumer tries again and again
        with pytest.raises(OperationalError):
            fleet.flush()
    assert health(harness) == {} and dead_letters(harness) == []
    assert fleet.counters["dead_lettered"] == 0

    fleet.database_away = False
    fleet.flush()
    assert set(health(harness)) == {"dev-1", "dev-2"}
    assert dead_letters(harness) == []


def test_unbatched_a_poison_heartbeat_still_raises_to_its_caller(harness: Harness) -> None:
    """One message at a time (``dead-letters --replay``), the caller keeps or reports it."""
    fleet = PoisonFleet(harness.sessions, 90.0, harness.clock)
    with pytest.raises(TypeError):
        send_heartbeat(fleet, "dev-p", POISON_SEQ)
    assert dead_letters(harness) == [] and health(harness) == {}
    send_heartbeat(fleet, "dev-p", POISON_SEQ + 1)  # nothing of the poison one was kept
    assert json_seq(health(harness)["dev-p"].heartbeat) == POISON_SEQ + 1


# -- through the consumer, on a real Mosquitto ---------------------------------------------------


class Device:
    """A device's own broker login, publishing at QoS 1 and waiting for the broker's PUBACK."""

    def __init__(self, broker: MosquittoBroker, device_id: str) -> None:
        broker.add_account(device_id)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{device_id}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(device_id, broker.accounts.passwords[device_id])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.device_id = device_id

    def heartbeat(self, seq: int) -> bytes:
        payload = beat(self.device_id, seq)
        info = self.client.publish(topics.heartbeat(self.device_id), payload, qos=1)
        info.wait_for_publish(WAIT)
        assert info.is_published()
        return payload

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def devices(mosquitto: MosquittoBroker) -> Iterator[dict[str, Device]]:
    made = {d: Device(mosquitto, d) for d in ("dev-1", "dev-2", "dev-p")}
    try:
        yield made
    finally:
        for device in made.values():
            device.close()


def poison_consumer_settings(broker: MosquittoBroker, harness: Harness) -> Settings:
    return consumer_settings(
        broker,
        harness,
        "ingest-poison",
        ingest_retry_base_s=0.05,
        ingest_retry_cap_s=0.2,
        flush_linger_s=0.3,  # the heartbeats below share a batch
    )


def test_through_the_consumer_a_poison_heartbeat_is_dead_lettered_once_and_all_are_acked(
    mosquitto: MosquittoBroker, devices: dict[str, Device], harness: Harness
) -> None:
    settings = poison_consumer_settings(mosquitto, harness)
    fleet = PoisonFleet(harness.sessions, 90.0, harness.clock, batched=True)
    with ConsumerThread(settings, batched_processor(harness, fleet)) as thread:
        consumer = thread.consumer
        assert consumer is not None
        devices["dev-1"].heartbeat(1)
        poison = devices["dev-p"].heartbeat(POISON_SEQ)
        devices["dev-2"].heartbeat(1)
        wait_for(lambda: consumer.counters["acked"] == 3, what="all three acknowledged")
        assert consumer.counters["flush_failed"] == 0
        assert consumer.counters["dead_lettered"] == 0  # the fleet kept it, in its flush
    assert set(health(harness)) == {"dev-1", "dev-2"}
    (letter,) = dead_letters(harness)
    assert letter.topic == topics.heartbeat("dev-p") and letter.payload == poison
    assert fleet.counters["dead_lettered"] == 1

    # Acknowledged, so not sent again: a restarted consumer on the same session sees only
    # what is new (a redelivery would come before it).
    fleet = PoisonFleet(harness.sessions, 90.0, harness.clock, batched=True)
    with ConsumerThread(settings, batched_processor(harness, fleet)) as thread:
        restarted = thread.consumer
        assert restarted is not None
        devices["dev-p"].heartbeat(POISON_SEQ + 1)
        wait_for(lambda: restarted.counters["acked"] == 1, what="the new heartbeat")
        assert restarted.counters["received"] == 1
    assert json_seq(health(harness)["dev-p"].heartbeat) == POISON_SEQ + 1
    assert len(dead_letters(harness)) == 1


def test_through_the_consumer_nothing_is_acked_while_the_database_is_away(
    mosquitto: MosquittoBroker, devices: dict[str, Device], harness: Harness
) -> None:
    settings = poison_consumer_settings(mosquitto, harness)
    fleet = PoisonFleet(harness.sessions, 90.0, harness.clock, batched=True)
    fleet.database_away = True
    with ConsumerThread(settings, batched_processor(harness, fleet)) as thread:
        consumer = thread.consumer
        assert consumer is not None
        devices["dev-1"].heartbeat(1)
        devices["dev-2"].heartbeat(1)
        wait_for(lambda: consumer.counters["flush_failed"] >= 3, what="failed flushes")
        assert consumer.counters["acked"] == 0
        assert health(harness) == {} and dead_letters(harness) == []
        fleet.database_away = False
        wait_for(lambda: consumer.counters["acked"] == 2, what="both acknowledged")
    assert set(health(harness)) == {"dev-1", "dev-2"}
    assert dead_letters(harness) == [] and fleet.counters["dead_lettered"] == 0
