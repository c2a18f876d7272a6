"""Class sessions on the server: creation with their secret random windows, and what devices
say about them (opened, closed, gaps) turned into the session's recorded duration."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.schemas import Event, EventType
from ingest_server import feed
from ingest_server.facts import installed_camera, recording_events, reported_seconds
from ingest_server.feed import session_clock
from ingest_server.models import (
    ClassSession,
    Clip,
    Device,
    DeviceEvent,
    SessionState,
    SessionWindow,
)
from ingest_server.rules.verdict import recorded_seconds
from ingest_server.rules.windows import draw_windows
from ingest_server.settings import Settings

log = logging.getLogger(__name__)


def window_cmd_id(session_id: str, idx: int) -> str:
    """The cut command of a window has a stable id, so a re-sent request is deduplicated."""
    cmd_id = f"cut-{session_id}-{idx}"
    if len(cmd_id) <= 64:
        return cmd_id
    # Cutting a long id short would give every window of the session the same command.
    return f"cut-{hashlib.sha256(session_id.encode()).hexdigest()[:40]}-{idx}"


def create_session(
    db: Session,
    settings: Settings,
    *,
    session_id: str,
    class_id: str,
    classroom_id: str,
    lecturer_id: str,
    start: datetime,
    duration_s: float,
) -> ClassSession:
    """Create (or update, while still in the future) a session and draw its windows."""
    row = db.get(ClassSession, session_id)
    if row is None:
        row = ClassSession(
            id=session_id,
            state=SessionState.SCHEDULED.value,
            verdict="pending",
            verdict_reasons="[]",
        )
        db.add(row)
    elif (
        row.state != SessionState.SCHEDULED.value or row.scheduled_start <= session_clock(db).now()
    ):
        # A session under way or past keeps its windows: redrawing would let the school
        # fish for convenient minutes.
        return row
    row.class_id, row.classroom_id, row.lecturer_id = class_id, classroom_id, lecturer_id
    row.scheduled_start, row.duration_s = start, duration_s
    db.flush()
    for old in db.scalars(select(SessionWindow).where(SessionWindow.session_id == session_id)):
        db.delete(old)
    db.flush()
    end = start + timedelta(seconds=duration_s)
    windows = draw_windows(
        start, end, count=settings.windows_per_session, length_s=settings.window_length_s
    )
    for idx, window in enumerate(windows):
        db.add(
            SessionWindow(
                session_id=session_id,
                idx=idx,
                start=window.start,
                end=window.end,
                cmd_id=window_cmd_id(session_id, idx),
                request_count=0,
            )
        )
    return row


def append_feed(db: Session, kind: str, session_id: str | None, payload: dict[str, object]) -> None:
    """One entry of the append-only feed the supervision backend reads (``ingest_server.feed``:
    written at commit, so its ``seq`` follows commit order)."""
    feed.append(db, kind, session_id, payload)


def speaks_for(session: ClassSession, device_id: str, device_classroom: str | None) -> bool:
    """Whether ``device_id`` (now installed in ``device_classroom``) is the session's camera:
    the one bound to it when it began, else (not begun) the one in its classroom."""
    if session.device_id is not None:
        return session.device_id == device_id
    return device_classroom is not None and device_classroom == session.classroom_id


def bind_camera(db: Session, session: ClassSession) -> None:
    """Bind a session that has begun to its classroom's camera of that moment, once."""
    if session.device_id is None:
        session.device_id = installed_camera(db, session.classroom_id)


def server_time(event: Event, received_at: datetime) -> datetime:
    """When ``event`` happened in server time: its device time less the offset it stated, but
    never after the server received it (a camera with no offset estimate yet, or one that
    lies, cannot stretch a class into the future)."""
    try:
        at = event.at - timedelta(seconds=event.clock_offset_s or 0.0)
    except OverflowError:
        at = received_at
    return min(at, received_at)


def record_device_event(db: Session, event: Event, received_at: datetime | None = None) -> set[str]:
    """Keep a device's event and apply it to its session; return the sessions it touched.

    Times are stored in server time (``server_time``), beside the device's own and its offset;
    ``received_at`` is when the server received it (now on ``db``'s clock, unless given).
    Only the camera of a session's classroom may speak for it; a stop of a session whose start
    was never reported changes nothing.
    """
    if db.scalar(select(DeviceEvent.id).where(DeviceEvent.event_id == event.event_id)):
        return set()  # a redelivery
    received_at = received_at or session_clock(db).now()
    classroom_id = db.scalar(select(Device.classroom_id).where(Device.device_id == event.device_id))
    named = [db.get(ClassSession, event.session_id)] if event.session_id else []
    if event.cmd_id and event.cmd_id.startswith("cut-"):
        window = db.scalar(select(SessionWindow).where(SessionWindow.cmd_id == event.cmd_id))
        named += [db.get(ClassSession, window.session_id)] if window else []
    if not all(speaks_for(s, event.device_id, classroom_id) for s in named if s is not None):
        # Only a session's own camera may open, close, shorten or answer for it.
        log.warning(
            "%s from %s names a session it does not film; ignored",
            event.type.value,
            event.device_id,
        )
        return set()
    db.add(
        DeviceEvent(
            device_id=event.device_id,
            event_id=event.event_id,
            type=event.type.value,
            at=server_time(event, received_at),
            device_at=event.at,
            clock_offset_s=event.clock_offset_s,
            session_id=event.session_id,
            cmd_id=event.cmd_id,
            data=json.dumps(event.data, default=str),
            received_at=received_at,
        )
    )
    touched: set[str] = set()
    if event.cmd_id and event.cmd_id.startswith("cut-"):
        window = db.scalar(select(SessionWindow).where(SessionWindow.cmd_id == event.cmd_id))
        if window is not None:
            if event.type == EventType.CUT_DONE:
                window.upload_id = str(event.data.get("upload_id") or "") or None
                window.failed_reason = None
            elif event.type == EventType.CUT_FAILED:
                window.failed_reason = str(event.data.get("reason") or "cut_failed")[:32]
                window.failed_at = received_at
            touched.add(window.session_id)
    session = db.get(ClassSession, event.session_id) if event.session_id else None
    if session is None:
        return touched
    touched.add(session.id)
    at = server_time(event, received_at)
    if event.type == EventType.SESSION_STARTED:
        if session.device_id is None:
            session.device_id = event.device_id  # speaks_for: the classroom's camera
        opened_before = session.opened_at
        if session.opened_at is None or at < session.opened_at:
            session.opened_at = at
            session.device_clock_offset_s = event.clock_offset_s
        if session.state == SessionState.SCHEDULED.value:
            session.state = SessionState.OPEN.value
            append_feed(db, "session_opened", session.id, {"at": at.isoformat()})
        # Stops delivered before this start (reordered, redelivered) count now: whatever the
        # order of delivery, a stop counts iff it is not before the session's first start.
        if opened_before is None or at < opened_before:
            for stop in _stops(db, session.id, since=at, before=opened_before):
                _close(db, session, stop.at)
    elif event.type == EventType.SESSION_STOPPED:
        if session.opened_at is None or at < session.opened_at:
            # Counted if and when an earlier start arrives.
            log.warning("session_stopped of %s before any start; not counted yet", session.id)
            return touched
        _close(db, session, at)
    if event.type in (
        EventType.SESSION_STARTED,
        EventType.SESSION_STOPPED,
        EventType.RECORDING_GAP,
    ):
        session.recorded_s = session_recorded_seconds(db, session.id)
    return touched


def _stops(
    db: Session, session_id: str, since: datetime, before: datetime | None = None
) -> list[DeviceEvent]:
    """The session's stored stops from ``since`` (and before ``before``), oldest first."""
    query = select(DeviceEvent).where(
        DeviceEvent.session_id == session_id,
        DeviceEvent.type == EventType.SESSION_STOPPED.value,
        DeviceEvent.at >= since,
    )
    if before is not None:
        query = query.where(DeviceEvent.at < before)
    return list(db.scalars(query.order_by(DeviceEvent.at, DeviceEvent.event_id)))


def _close(db: Session, session: ClassSession, at: datetime) -> None:
    """Count one stop: the session is closed at its latest stop, and the recorded seconds the
    camera reported are those of its latest stop that reported a figure."""
    if session.closed_at is None or at > session.closed_at:
        session.closed_at = at
    session.state = SessionState.CLOSED.value
    for stop in reversed(_stops(db, session.id, since=session.opened_at or at)):
        reported = reported_seconds(json.loads(stop.data or "{}").get("recorded_s"))
        if reported is not None:
            session.reported_recorded_s = reported
            break
    append_feed(db, "session_closed", session.id, {"at": at.isoformat()})


def session_recorded_seconds(db: Session, session_id: str) -> float | None:
    """The recorded duration from the device's started/stopped/gap events."""
    return recorded_seconds(recording_events(db, session_id))


def link_clip(db: Session, clip: Clip) -> str | None:
    """The session whose window a stored clip answers, by the command its signed manifest
    names, when the clip comes from that session's classroom camera (else ``None``: another
    camera's clip is kept as evidence but speaks for no session of another classroom)."""
    if not clip.cmd_id:
        return None
    window = db.scalar(select(SessionWindow).where(SessionWindow.cmd_id == clip.cmd_id))
    session = db.get(ClassSession, window.session_id) if window else None
    if session is None:
        return None
    device = db.get(Device, clip.device_id)
    if device is None or device.classroom_id != session.classroom_id:
        log.warning(
            "clip %s from %s answers a window of session %s of another classroom",
            clip.upload_id,
            clip.device_id,
            session.id,
        )
    # Either way the session's verdict has a new fact to weigh.
    return session.id
