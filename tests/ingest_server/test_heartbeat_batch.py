"""A group commit of statuses and heartbeats writes each device's row once, with its newest state,
and keeps every presence change in order (``device_health.HealthBatch``), on SQLite and
PostgreSQL alike.

Within one flush a device may beat several times, drop (its will) and come back: the row must end
with its newest heartbeat, a late heartbeat drained from a backlog must not replace a newer one,
and each transition must be in ``presence_changes`` and the feed. A later flush that only stores
heartbeats changes only the heartbeat columns.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ingest_helpers import Harness, quiet_heartbeat
from sqlalchemy import select

from common import topics
from common.heartbeat import Heartbeat
from common.schemas import Status, StatusState
from ingest_server.device_messages import DeviceMessages
from ingest_server.models import DeviceHealth, FeedEvent, PresenceChange


class Fleet:
    """Batched device messages on ``harness``, with a switch for a backlog being drained."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.live = True
        self.messages = DeviceMessages(
            harness.sessions, 90.0, harness.clock, caught_up=lambda: self.live, batched=True
        )

    def beat(self, device_id: str, seq: int, at: datetime | None = None) -> datetime:
        """A heartbeat stamped ``at`` (now by default); returns when it was received."""
        received = self.harness.clock.now()
        payload = quiet_heartbeat(device_id, at or received, seq).to_bytes()
        assert self.messages.handle(topics.parse_up(topics.heartbeat(device_id)), payload) == []
        self.harness.clock.advance(1.0)
        return received

    def offline(self, device_id: str) -> None:
        """The will the broker publishes for a device that dropped."""
        status = Status(device_id=device_id, state=StatusState.OFFLINE)
        self.messages.handle(topics.parse_up(topics.status(device_id)), status.to_bytes())
        self.harness.clock.advance(1.0)


def rows(harness: Harness) -> dict[str, tuple[str, datetime | None, datetime | None, int]]:
    """Each device's status, status_at, last_heartbeat_at and the seq of its stored heartbeat."""
    with harness.sessions() as db:
        return {
            row.device_id: (
                row.status,
                row.status_at,
                row.last_heartbeat_at,
                Heartbeat.model_validate_json(row.heartbeat or "").seq,
            )
            for row in db.scalars(select(DeviceHealth))
        }


def changes(harness: Harness, device_id: str) -> list[tuple[bool, str, datetime]]:
    with harness.sessions() as db:
        found = db.scalars(
            select(PresenceChange)
            .where(PresenceChange.device_id == device_id)
            .order_by(PresenceChange.id)
        )
        return [(change.online, change.source, change.at) for change in found]


def feed_kinds(harness: Harness) -> list[str]:
    with harness.sessions() as db:
        return list(db.scalars(select(FeedEvent.kind).order_by(FeedEvent.seq)))


def check_one_flush(harness: Harness) -> None:
    fleet = Fleet(harness)
    one_first = fleet.beat("dev-1", 1)
    two_first = fleet.beat("dev-2", 1)
    one_newest = fleet.beat("dev-1", 2)
    fleet.offline("dev-2")  # stamped when it was last seen: its first heartbeat
    two_back = fleet.beat("dev-2", 2)
    fleet.live = False  # a heartbeat drained from a backlog, older than dev-1's newest
    fleet.beat("dev-1", 3, at=one_first - timedelta(seconds=5))
    fleet.messages.flush()

    assert rows(harness) == {
        "dev-1": ("online", one_first, one_newest, 2),
        "dev-2": ("online", two_back, two_back, 2),
    }
    assert changes(harness, "dev-1") == [(True, "heartbeat", one_first)]
    assert changes(harness, "dev-2") == [
        (True, "heartbeat", two_first),
        (False, "status", two_first),
        (True, "heartbeat", two_back),
    ]
    assert feed_kinds(harness) == [
        "device_online",
        "device_online",
        "device_offline",
        "device_online",
    ]
    counters = fleet.messages.counters
    assert counters["heartbeats"] == 5 and counters["status_offline"] == 1

    # Only heartbeats now: the rows' presence stays as it was, their heartbeats move on.
    fleet.live = True
    one_later = fleet.beat("dev-1", 4)
    fleet.messages.flush()
    assert rows(harness)["dev-1"] == ("online", one_first, one_later, 4)
    assert rows(harness)["dev-2"] == ("online", two_back, two_back, 2)
    assert len(changes(harness, "dev-1")) == 1 and len(feed_kinds(harness)) == 4


def test_a_flush_writes_each_device_once_with_its_newest_state(harness: Harness) -> None:
    check_one_flush(harness)


def test_a_flush_writes_each_device_once_on_postgresql_too(pg_harness: Harness) -> None:
    check_one_flush(pg_harness)
