"""Gathering a session's facts from the database as plain data for the pure rules in
``ingest_server.rules`` (``ingest_server.verdicts`` calls them and stores the verdict)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.geo import Coordinate, Datum
from common.schemas import EventType
from ingest_server.models import (
    Classroom,
    ClassSession,
    Clip,
    ClipCheck,
    Device,
    DeviceEvent,
    Photo,
    PresenceChange,
    SessionWindow,
)
from ingest_server.photos import near_duplicate
from ingest_server.rules.clip_proof import ClipFacts, DecodedClip, WindowFacts
from ingest_server.rules.photo_match import PhotoFacts as PhotoMatchFacts
from ingest_server.rules.photo_match import (
    PhotoKind,
    photo_match,
)
from ingest_server.rules.session import ClassroomFacts, SessionFacts
from ingest_server.rules.verdict import (
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
    """The device's started/stopped/gap reports for a session, in server time.

    ``DeviceEvent.at`` is stored in server time already; the gap bounds in an event's data are
    in the device's clock and are mapped with the offset the event stated.
    """
    out: list[RecordingEvent] = []
    rows = db.scalars(select(DeviceEvent).where(DeviceEvent.session_id == session_id)).all()
    for row in rows:
        kind = _RECORDING_KINDS.get(row.type)
        if kind is None:
            continue
        if kind is RecordingEventKind.GAP:
            offset = timedelta(seconds=row.clock_offset_s or 0.0)
            try:
                data = json.loads(row.data)
                start = datetime.fromisoformat(data["start"]) - offset
                end = datetime.fromisoformat(data["end"]) - offset if data.get("end") else None
            except (KeyError, TypeError, ValueError, OverflowError):
                continue
            out.append(RecordingEvent(kind, start, end))
        else:
            out.append(RecordingEvent(kind, row.at))
    return out


def reported_recorded_seconds(db: Session, session_id: str) -> float | None:
    """What the camera itself said it recorded, in its latest ``session_stopped``."""
    rows = db.scalars(
        select(DeviceEvent.data)
        .where(
            DeviceEvent.session_id == session_id,
            DeviceEvent.type == EventType.SESSION_STOPPED.value,
        )
        .order_by(DeviceEvent.id.desc())
    ).all()
    for data in rows:
        try:
            value = json.loads(data).get("recorded_s")
        except (TypeError, ValueError, AttributeError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _decoded(check: ClipCheck | None) -> DecodedClip | None:
    if check is None or check.checked_at is None:
        return None
    return DecodedClip(
        error=check.error,
        frames=check.decoded_frames or 0,
        duration_s=check.decoded_duration_s or 0.0,
        frame_rate=check.frame_rate or 0.0,
        black=bool(check.black),
        frozen=bool(check.frozen),
        moved=bool(check.moved),
    )


def window_clips(db: Session, cmd_id: str) -> tuple[ClipFacts, ...]:
    """Every stored clip whose signed manifest answers ``cmd_id``, from any device, with what
    its check found and the window (if any) its bytes were first given for."""
    out = []
    for clip in db.scalars(select(Clip).where(Clip.cmd_id == cmd_id).order_by(Clip.id)):
        first = db.execute(
            select(Clip.cmd_id, Clip.device_id)
            .where(
                Clip.sha256 == clip.sha256,
                Clip.id < clip.id,
                Clip.cmd_id.is_not(None),
                Clip.cmd_id != cmd_id,
            )
            .order_by(Clip.id)
            .limit(1)
        ).first()
        first_used_by = None
        if first is not None:
            window = db.scalar(select(SessionWindow).where(SessionWindow.cmd_id == first.cmd_id))
            first_used_by = (
                f"{window.session_id}#{window.idx + 1}" if window else f"command {first.cmd_id}"
            )
        out.append(
            ClipFacts(
                clip_id=clip.id,
                upload_id=clip.upload_id,
                device_id=clip.device_id,
                cmd_id=clip.cmd_id,
                sha256=clip.sha256,
                cut_start=clip.cut_start,
                cut_end=clip.cut_end,
                clock_offset_s=clip.clock_offset_s,
                duration_s=clip.duration_s,
                frames=clip.frames,
                decoded=_decoded(db.get(ClipCheck, clip.id)),
                first_used_by=first_used_by,
            )
        )
    return tuple(out)


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
        kinds = {e.kind for e in events}
        # Both ends reported: a stop without a start says nothing about what was recorded.
        reported = {RecordingEventKind.STARTED, RecordingEventKind.STOPPED} <= kinds
        recorded = recorded_seconds(events) if reported else None
        windows = []
        for w in db.scalars(
            select(SessionWindow)
            .where(SessionWindow.session_id == row.id)
            .order_by(SessionWindow.idx)
        ):
            windows.append(window_evidence(db, w))
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
            reported_recorded_s=reported_recorded_seconds(db, row.id),
            device_clock_offset_s=row.device_clock_offset_s,
            windows=tuple(windows),
            photos=tuple(photos),
            offline=tuple(offline),
            duration_tolerance_s=self.settings.duration_tolerance_s,
        )


def window_evidence(db: Session, w: SessionWindow) -> WindowEvidence:
    """A window, the clips offered for it, when it was asked for, whether its cut failed."""
    return WindowEvidence(
        facts=WindowFacts(number=w.idx + 1, window=Window(w.start, w.end), cmd_id=w.cmd_id),
        clips=window_clips(db, w.cmd_id),
        requested_at=w.requested_at,
        cut_failed=w.failed_reason,
    )
