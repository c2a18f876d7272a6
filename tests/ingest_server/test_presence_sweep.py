"""The heartbeat-timeout sweep marks offline only devices that went silent (DESIGN.md §2).

* A heartbeat received but still waiting for its group commit (the consumer lingers up to
  ``flush_linger_s`` for more) is the device heard: the sweep on the scheduler's thread must not
  mark it offline meanwhile, only to have it come back online at the commit.
* The sweep's offline (source ``heartbeat_timeout``) fits its column on PostgreSQL, which
  refuses what is too long where SQLite stores it anyway.
"""

from __future__ import annotations

from datetime import datetime

from ingest_helpers import Harness, quiet_heartbeat
from sqlalchemy import select

from common import topics
from ingest_server.device_messages import DeviceMessages
from ingest_server.models import DeviceHealth, PresenceChange

TIMEOUT_S = 90.0


def _beat(fleet: DeviceMessages, device_id: str, seq: int) -> None:
    beat = quiet_heartbeat(device_id, fleet.clock.now(), seq)
    fleet.handle(topics.parse_up(topics.heartbeat(device_id)), beat.to_bytes())


def _changes(harness: Harness, device_id: str) -> list[tuple[bool, str, datetime]]:
    with harness.sessions() as db:
        rows = db.scalars(
            select(PresenceChange)
            .where(PresenceChange.device_id == device_id)
            .order_by(PresenceChange.id)
        )
        return [(row.online, row.source, row.at) for row in rows]


def test_a_heartbeat_waiting_for_its_commit_keeps_its_device_online(harness: Harness) -> None:
    fleet = DeviceMessages(harness.sessions, TIMEOUT_S, harness.clock, batched=True)
    _beat(fleet, "dev-1", 1)
    fleet.flush()
    harness.clock.advance(TIMEOUT_S - 0.02)  # the next beat comes just in time ...
    _beat(fleet, "dev-1", 2)
    harness.clock.advance(0.04)  # ... and the sweep runs before the consumer's commit
    assert fleet.sweep_timeouts() == []
    fleet.flush()
    assert [change[:2] for change in _changes(harness, "dev-1")] == [(True, "heartbeat")]
    # Once committed, the beat counts from the database; silence after it still times out.
    harness.clock.advance(TIMEOUT_S + 1)
    assert fleet.sweep_timeouts() == ["dev-1"]
    assert [change[:2] for change in _changes(harness, "dev-1")] == [
        (True, "heartbeat"),
        (False, "heartbeat_timeout"),
    ]


def test_the_timeout_sweep_records_its_offline_on_postgresql(pg_harness: Harness) -> None:
    fleet = DeviceMessages(pg_harness.sessions, TIMEOUT_S, pg_harness.clock, batched=True)
    _beat(fleet, "dev-1", 1)
    fleet.flush()
    pg_harness.clock.advance(TIMEOUT_S + 5)
    assert fleet.sweep_timeouts() == ["dev-1"]
    assert [change[:2] for change in _changes(pg_harness, "dev-1")] == [
        (True, "heartbeat"),
        (False, "heartbeat_timeout"),
    ]
    with pg_harness.sessions() as db:
        assert db.get(DeviceHealth, "dev-1").status == "offline"  # type: ignore[union-attr]
