"""Devices' ``device_health`` rows and presence changes as one flush sees them: loaded once,
changed in memory, written at the end with one Core ``executemany`` statement per kind of change.

Heartbeats are the bulk of the traffic, and for each the ORM would track an object, compare its
attributes and build its UPDATE at flush: more than the database's own work. Here a row is a
plain object; a device heard several times in one flush is written once, with its newest state,
and its heartbeat is serialised only then. An UPDATE sets only the columns that changed, as the
ORM's did, so a timeout the sweep commits meanwhile on PostgreSQL is not overwritten by a batch
that only stored heartbeats. The statements are plain Core, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from common.heartbeat import Heartbeat
from ingest_server.models import DeviceHealth, PresenceChange

HEALTH = cast(Table, DeviceHealth.__table__)
PRESENCE_CHANGES = cast(Table, PresenceChange.__table__)
_COLUMNS = ("status", "status_at", "last_heartbeat_at", "heartbeat")


@dataclass(slots=True)
class HealthRow:
    """One device's ``device_health`` row, changed in memory until ``HealthBatch.write``."""

    device_id: str
    status: str = "offline"
    status_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    stored_heartbeat: str | None = None  # the row's heartbeat column as loaded or written
    beat: Heartbeat | None = None  # a newer heartbeat, serialised when written
    new: bool = False  # not in the table yet
    changed: set[str] = field(default_factory=set)  # columns to write

    @property
    def heartbeat(self) -> str | None:
        """The heartbeat column's value (JSON) as it will be written."""
        if self.beat is not None:
            return self.beat.model_dump_json()
        return self.stored_heartbeat

    def last_seen(self) -> datetime | None:
        """The last time the device was heard: a heartbeat or a status."""
        return max((t for t in (self.last_heartbeat_at, self.status_at) if t), default=None)

    def last_offset(self) -> float | None:
        """The clock offset the device stated in its last heartbeat."""
        if self.beat is not None:
            return self.beat.clock_offset_s
        if not self.stored_heartbeat:
            return None
        try:
            value = json.loads(self.stored_heartbeat).get("clock_offset_s")
        except (ValueError, AttributeError):
            return None
        return float(value) if isinstance(value, int | float) else None

    def set_heartbeat(self, at: datetime, beat: Heartbeat) -> None:
        """The device's newest heartbeat, heard at ``at`` (server time)."""
        self.last_heartbeat_at, self.beat = at, beat
        self.changed.update(("last_heartbeat_at", "heartbeat"))

    def set_presence(self, status: str, at: datetime) -> None:
        self.status, self.status_at = status, at
        self.changed.update(("status", "status_at"))

    def copy(self) -> HealthRow:
        return replace(self, changed=set(self.changed))

    def values(self, columns: Iterable[str]) -> dict[str, Any]:
        return {column: getattr(self, column) for column in columns}


class HealthBatch:
    """The rows one transaction on ``db`` changes, and the presence changes it records; nothing
    reaches the database before ``write``."""

    def __init__(self, db: Session, rows: dict[str, HealthRow]) -> None:
        self.db = db
        self.rows = rows
        self.changes: list[dict[str, Any]] = []  # presence_changes rows to insert

    @classmethod
    def load(
        cls, db: Session, device_ids: Iterable[str] | None, *where: ColumnElement[bool]
    ) -> HealthBatch:
        """The rows of ``device_ids`` (every row matching ``where`` when None) in one query."""
        query = select(HEALTH.c.device_id, *(HEALTH.c[c] for c in _COLUMNS))
        if device_ids is not None:
            query = query.where(HEALTH.c.device_id.in_(set(device_ids)))
        rows = {
            device_id: HealthRow(device_id, status, status_at, last_heartbeat_at, heartbeat)
            for device_id, status, status_at, last_heartbeat_at, heartbeat in db.execute(
                query.where(*where)
            )
        }
        return cls(db, rows)

    def health(self, device_id: str) -> HealthRow:
        """``device_id``'s row, a new offline one if it has none yet."""
        row = self.rows.get(device_id)
        if row is None:
            row = self.rows[device_id] = HealthRow(device_id, new=True, changed={"status"})
        return row

    def record_change(self, device_id: str, at: datetime, online: bool, source: str) -> None:
        self.changes.append({"device_id": device_id, "at": at, "online": online, "source": source})

    def write(self) -> None:
        """Write what changed since the last ``write``: new rows, then each set of changed
        columns as one UPDATE executed for every row that changed just those, then the
        presence changes."""
        inserts: list[dict[str, Any]] = []
        updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        dirty = [row for row in self.rows.values() if row.changed]
        for row in dirty:
            if row.beat is not None:  # serialised once, however often the device beat
                row.stored_heartbeat, row.beat = row.beat.model_dump_json(), None
            if row.new:
                inserts.append({"device_id": row.device_id, **row.values(_COLUMNS)})
            else:
                columns = tuple(c for c in _COLUMNS if c in row.changed)
                params = {"key": row.device_id, **row.values(columns)}
                updates.setdefault(columns, []).append(params)
        if inserts:
            self.db.execute(insert(HEALTH), inserts)
        for group in updates.values():
            # The SET clause is the parameters' columns, the same for every row of a group.
            self.db.execute(update(HEALTH).where(HEALTH.c.device_id == bindparam("key")), group)
        if self.changes:
            self.db.execute(insert(PRESENCE_CHANGES), self.changes)
        for row in dirty:
            row.new = False
            row.changed.clear()
        self.changes = []
