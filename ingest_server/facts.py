"""Gathering a session's facts from the database as plain data for the pure rules in
``ingest_server.rules`` (``ingest_server.verdicts`` calls them and stores the verdict)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.geo import Coordinate, Datum
from common.schemas import EventType, RejectReason
from ingest_server.models import (
    Classroom,
    ClassSession,
    Clip,
    ClipCheck,
    Device,
    DeviceEvent,
    Photo,
    PresenceChange,
    Rejection,
    SessionWindow,
)
from ingest_server.photos import near_duplicate
from ingest_server.rules.photo_match import PhotoFacts as PhotoMatchFacts
from ingest_server.rules.photo_match import (
    PhotoKind,
    photo_match,
)
from ingest_server.rules.session import ClassroomFacts, SessionFacts
from ingest_server.rules.verdict import (
    ClipStatus,
    Interval,
    PhotoEvidence,
    RecordingEvent,
    RecordingEventKind,
    SessionEvidence,
    WindowEvidence,
    recorded_seconds,
)
from ingest_server.rules.windows import Window
from ingest_server.settings import Settings

log = logging.getLogger(__name__)
REUSE_MAX_BITS = 2

_RECORDING_KINDS = {
    EventType.SESSION_STARTED.value: RecordingEventKind.STARTED,
    EventType.SESSION_STOPPED.value: RecordingEventKind.STOPPED,
    EventType.RECORDING_GAP.value: RecordingEventKind.GAP,
}


def recording_events(db: Session, session_id: str) -> list[RecordingEvent]:
    """The device's started/stopped/gap reports for a session."""
    out: list[RecordingEvent] = []
    rows = db.scalars(select(DeviceEvent).where(DeviceEvent.session_id == session_id)).all()
    for row in rows:
        kind = _RECORDING_KINDS.get(row.type)
        if kind is None:
            continue
        if kind is RecordingEventKind.GAP:
            data = json.loads(row.data)
            try:
                start = datetime.fromisoformat(data["start"])
                end = datetime.fromisoformat(data["end"]) if data.get("end") else None
            except (KeyError, TypeError, ValueError):
                continue
            out.append(RecordingEvent(kind, start, end))
        else:
            out.append(RecordingEvent(kind, row.at))
    return out


def offline_intervals(db: Session, device_id: str, since: datetime) -> list[Interval]:
    """When the device was offline from ``since`` on (from presence changes)."""
    changes = db.scalars(
        select(PresenceChange)
        .where(PresenceChange.device_id == device_id)
        .order_by(PresenceChange.at, PresenceChange.id)
    ).all()
    out: list[Interval] = []
    offline_from: datetime | None = None
    for change in changes:
        if not change.online and offline_from is None:
            offline_from = change.at
        elif change.online and offline_from is not None:
            if change.at > since:
                out.append(Interval(max(offline_from, since), change.at))
            offline_from = None
    if offline_from is not None:
        out.append(Interval(max(offline_from, since), None))
    return out


def reused_from(photo: Photo, others: Sequence[tuple[str, str, str]]) -> str | None:
    """Another session with the same image: the same bytes, or the same picture re-encoded
    or rescaled (which moves a perceptual hash by 0–2 bits). A looser match would catch
    honest photos taken from the same spot on another day, so it is not used."""
    for session_id, sha256, phash in others:
        if sha256 == photo.sha256 or near_duplicate(phash, photo.phash, REUSE_MAX_BITS):
            return session_id
    return None


class FactReader:
    """Reads everything the database knows about a session, as plain data."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def evidence(self, db: Session, row: ClassSession) -> SessionEvidence:
        """Everything the database knows about a session, as plain data."""
        device_id = (
            db.scalar(
                select(Device.device_id).where(
                    Device.classroom_id == row.classroom_id, Device.enabled.is_(True)
                )
            )
            or ""
        )
        classroom = db.get(Classroom, row.classroom_id)
        assert classroom is not None
        facts = SessionFacts(
            session_id=row.id,
            classroom_id=row.classroom_id,
            device_id=device_id,
            lecturer_id=row.lecturer_id,
            scheduled_start=row.scheduled_start,
            preset_duration_s=row.duration_s,
            opened_at=row.opened_at,
            closed_at=row.closed_at,
        )
        events = recording_events(db, row.id)
        stopped = any(e.kind is RecordingEventKind.STOPPED for e in events)
        recorded = recorded_seconds(events) if stopped else None
        windows = []
        for w in db.scalars(
            select(SessionWindow)
            .where(SessionWindow.session_id == row.id)
            .order_by(SessionWindow.idx)
        ):
            windows.append(self._window_evidence(db, w))
        room = ClassroomFacts(
            classroom.id,
            Coordinate(classroom.lat, classroom.lon, Datum(classroom.datum)),
            classroom.radius_m,
        )
        photos = []
        own = db.scalars(select(Photo).where(Photo.session_id == row.id)).all()
        # Read once for the session (hashes only), not once per photo.
        others = (
            [
                (r.session_id, r.sha256, r.phash)
                for r in db.execute(
                    select(Photo.session_id, Photo.sha256, Photo.phash).where(
                        Photo.session_id != row.id
                    )
                )
            ]
            if own
            else []
        )
        for photo in own:
            match_facts = PhotoMatchFacts(
                photo_id=str(photo.id),
                lecturer_id=photo.lecturer_id,
                kind=PhotoKind(photo.kind),
                taken_at=photo.taken_at,
                location=Coordinate(photo.lat, photo.lon, Datum(photo.datum)),
            )
            match = photo_match(
                match_facts, facts, room, tolerance_s=self.settings.photo_tolerance_s
            )
            photos.append(PhotoEvidence(match_facts, match, reused_from(photo, others)))
        offline = offline_intervals(db, device_id, facts.start) if device_id else []
        return SessionEvidence(
            session=facts,
            recorded_s=recorded,
            windows=tuple(windows),
            photos=tuple(photos),
            offline=tuple(offline),
            duration_tolerance_s=self.settings.duration_tolerance_s,
        )

    def _window_evidence(self, db: Session, w: SessionWindow) -> WindowEvidence:
        window = Window(w.start, w.end)
        if not w.upload_id:
            return WindowEvidence(window, ClipStatus.MISSING)
        refused = db.scalar(
            select(Rejection.reason).where(
                Rejection.upload_id == w.upload_id,
                Rejection.reason == RejectReason.SIGNATURE_INVALID.value,
            )
        )
        if refused:
            return WindowEvidence(window, ClipStatus.STORED, signature_valid=False)
        clip = db.scalar(select(Clip).where(Clip.upload_id == w.upload_id))
        if clip is None:
            return WindowEvidence(window, ClipStatus.PENDING)
        check = db.get(ClipCheck, clip.id)
        if check is None:
            # Stored but not looked at yet: not verified until it has been.
            return WindowEvidence(window, ClipStatus.PENDING)
        return WindowEvidence(
            window,
            ClipStatus.STORED,
            black=check.black,
            frozen=check.frozen,
            moved=bool(check.moved),
        )
