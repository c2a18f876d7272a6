"""What devices say besides uploads: presence, heartbeats and events (DESIGN.md §2).

Runs on the ingest worker thread beside the upload processor. Presence comes from the retained
status message (the broker publishes the will when a device drops) and from heartbeats; a device
whose heartbeats stop for ``heartbeat_timeout_s`` is marked offline by ``sweep_timeouts``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from common import topics
from common.clock import Clock, SystemClock
from common.errors import ProtocolError
from common.heartbeat import Heartbeat
from common.schemas import Event, Status, StatusState, decode
from ingest_server.db import SessionFactory
from ingest_server.models import DeviceHealth, PresenceChange
from ingest_server.sessions import append_feed, record_device_event

log = logging.getLogger(__name__)


class DeviceMessages:
    """Handles ``status``, ``heartbeat`` and ``event`` messages; tells who came back online
    and which sessions changed, so requests can be re-sent and verdicts recomputed."""

    def __init__(
        self,
        session_factory: SessionFactory,
        heartbeat_timeout_s: float,
        clock: Clock | None = None,
        on_sessions_changed: Callable[[set[str]], None] | None = None,
        on_online: Callable[[str], None] | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.heartbeat_timeout = timedelta(seconds=heartbeat_timeout_s)
        self.clock = clock or SystemClock()
        self.on_sessions_changed = on_sessions_changed
        self.on_online = on_online
        self.counters: Counter[str] = Counter()

    def handle(self, up: topics.UpTopic, payload: bytes) -> None:
        """One device message; a bad one is counted and logged, never raised."""
        try:
            if up.kind is topics.UpKind.STATUS:
                if not payload:
                    return  # a cleared retained message
                status = decode(Status, payload)
                # Server time, not the device's ``at``: the will and the heartbeat timeout are
                # server time, and outages are measured between the two kinds of change.
                self._presence(
                    up.device_id,
                    status.state == StatusState.ONLINE,
                    self.clock.now(),
                    "status",
                    device_at=status.at,
                )
            elif up.kind is topics.UpKind.HEARTBEAT:
                self._heartbeat(up.device_id, decode(Heartbeat, payload))
            elif up.kind is topics.UpKind.EVENT:
                self._event(up.device_id, decode(Event, payload))
        except ProtocolError as exc:
            self.counters[f"bad_{up.kind.value}"] += 1
            log.warning("bad %s from %s: %s", up.kind.value, up.device_id, exc)

    def _health(self, db: Session, device_id: str) -> DeviceHealth:
        row = db.get(DeviceHealth, device_id)
        if row is None:
            row = DeviceHealth(device_id=device_id, status="offline")
            db.add(row)
        return row

    def _presence(
        self,
        device_id: str,
        online: bool,
        at: datetime,
        source: str,
        device_at: datetime | None = None,
    ) -> None:
        came_online = False
        with self.session_factory.begin() as db:
            row = self._health(db, device_id)
            state = "online" if online else "offline"
            if row.status != state:
                db.add(PresenceChange(device_id=device_id, at=at, online=online, source=source))
                append_feed(
                    db,
                    "device_" + state,
                    None,
                    {
                        "device_id": device_id,
                        "at": at.isoformat(),
                        "source": source,
                        "device_at": device_at.isoformat() if device_at else None,
                    },
                )
                came_online = online
            row.status, row.status_at = state, at
        self.counters[f"status_{'online' if online else 'offline'}"] += 1
        if came_online and self.on_online:
            self.on_online(device_id)

    def _heartbeat(self, device_id: str, beat: Heartbeat) -> None:
        if beat.device_id != device_id:
            self.counters["heartbeat_device_mismatch"] += 1
            return
        now = self.clock.now()
        with self.session_factory.begin() as db:
            row = self._health(db, device_id)
            row.last_heartbeat_at = now
            row.heartbeat = beat.model_dump_json()
            was_offline = row.status != "online"
        self.counters["heartbeats"] += 1
        if was_offline:
            self._presence(device_id, True, now, "heartbeat")

    def _event(self, device_id: str, event: Event) -> None:
        if event.device_id != device_id:
            self.counters["event_device_mismatch"] += 1
            log.warning("event from %s names device %s; ignored", device_id, event.device_id)
            return
        with self.session_factory.begin() as db:
            touched = record_device_event(db, event, self.clock.now())
        self.counters["events"] += 1
        if touched and self.on_sessions_changed:
            self.on_sessions_changed(touched)

    def sweep_timeouts(self) -> list[str]:
        """Mark devices whose heartbeats stopped as offline; return them."""
        now = self.clock.now()
        gone: list[str] = []
        with self.session_factory() as db:
            rows = db.scalars(select(DeviceHealth).where(DeviceHealth.status == "online")).all()
            for row in rows:
                last = max((t for t in (row.last_heartbeat_at, row.status_at) if t), default=None)
                if last is not None and now - last > self.heartbeat_timeout:
                    gone.append(row.device_id)
        for device_id in gone:
            self._presence(device_id, False, now, "heartbeat_timeout")
        return gone
