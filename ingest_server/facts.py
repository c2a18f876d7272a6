"""Gathering a session's facts from the database as plain data for the pure rules in
``ingest_server.rules`` (``ingest_server.verdicts`` calls them and stores the verdict)."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.clock import to_utc
from common.geo import Coordinate, Datum
from common.schemas import MAX_CLIP_S, EventType
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
from ingest_server.rules.clip_proof import ClipFacts, DecodedClip, WindowFacts
from ingest_server.rules.photo_match import (
    OtherSession,
    PhotoKind,
    PictureUse,
    double_bookings,
    earlier_use,
    photo_match,
)
from ingest_server.rules.photo_match import PhotoFacts as PhotoMatchFacts
from ingest_server.rules.photo_reasons import PhotoEvidence
from ingest_server.rules.session import ClassroomFacts, SessionFacts
from ingest_server.rules.verdict import (
    Interval,
    RecordingEvent,
    RecordingEventKind,
    SessionEvidence,
    WindowEvidence,
    recorded_seconds,
)
from ingest_server.rules.windows import Window
from ingest_server.settings import Settings

log = logging.getLogger(__name__)

_RECORDING_KINDS = {
    EventType.SESSION_STARTED.value: RecordingEventKind.STARTED,
    EventType.SESSION_STOPPED.value: RecordingEventKind.STOPPED,
    EventType.RECORDING_GAP.value: RecordingEventKind.GAP,
}


def recording_events(db: Session, session_id: str) -> list[RecordingEvent]:
    """The device's started/stopped/gap reports for a session, in server time.

    ``DeviceEvent.at`` is stored in server time already; the gap bounds in an event's data are
    in the device's clock and are mapped with the offset the event stated; a bound that is not
    a time (or not a string) drops the gap.
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
                # A camera may write either bound with or without an offset: both are read
                # as aware UTC (naive as UTC), or gaps of one session could not be compared.
                start = to_utc(datetime.fromisoformat(data["start"])) - offset
                end = (
                    to_utc(datetime.fromisoformat(data["end"])) - offset
                    if data.get("end")
                    else None
                )
            except (KeyError, TypeError, ValueError, OverflowError):
                continue
            out.append(RecordingEvent(kind, start, end))
        else:
            out.append(RecordingEvent(kind, row.at))
    return out


def installed_camera(db: Session, classroom_id: str) -> str | None:
    """The enabled camera installed in ``classroom_id`` now (one at most: see crud)."""
    return db.scalar(
        select(Device.device_id)
        .where(Device.classroom_id == classroom_id, Device.enabled.is_(True))
        .order_by(Device.device_id)
        .limit(1)
    )


def session_camera(db: Session, session: ClassSession) -> str | None:
    """The camera that films ``session``: bound when it began, else its classroom's now."""
    return session.device_id or installed_camera(db, session.classroom_id)


def taken_at(clip: Clip) -> datetime:
    """When the clip was taken, at the latest: the start of its cut in server time (through
    the offset its manifest stated), or when it was stored if that is earlier — a device's
    clock cannot make a clip younger than its arrival."""
    stored = to_utc(clip.stored_at)
    try:
        cut = to_utc(clip.cut_start) - timedelta(seconds=clip.clock_offset_s or 0.0)
    except OverflowError:
        return stored
    return min(stored, cut)


def classroom_when_taken(db: Session, clip: Clip) -> str | None:
    """The classroom the clip's camera was installed in when it took the clip, if the server
    knows: its present classroom when the present installation (``Device.classroom_since``,
    set by every move) began before the clip. The server keeps no older installations: a
    clip from before the present one is in no classroom."""
    device = db.get(Device, clip.device_id)
    if device is None or device.classroom_id is None:
        return None
    since = device.classroom_since
    if since is not None and taken_at(clip) < to_utc(since):
        return None
    return device.classroom_id


def clip_belongs(db: Session, clip: Clip, session: ClassSession) -> bool:
    """Whether ``clip`` is ``session``'s own: its device is the session's camera (bound when
    it began; for one that never began, its classroom's, installed there when it took the
    clip, so that a camera moved in since brings no earlier footage along)."""
    if session.device_id is not None:
        return clip.device_id == session.device_id
    return installed_camera(
        db, session.classroom_id
    ) == clip.device_id and session.classroom_id == classroom_when_taken(db, clip)


def clip_counts_for(db: Session, clip: Clip, session: ClassSession) -> bool:
    """Whether ``clip``, which names ``session``, is evidence about it at all: it is the
    session's own (``clip_belongs``), or its camera was then installed in another classroom
    of the session's institution — a neighbour's camera, which the rules refuse by name
    (``clip_wrong_device``). Another institution's camera never counts: what it signs
    neither changes nor shows in another school's session (its row keeps the claim)."""
    if clip_belongs(db, clip, session):
        return True
    room = classroom_when_taken(db, clip)
    if room is None:
        return False
    theirs, ours = db.get(Classroom, room), db.get(Classroom, session.classroom_id)
    return theirs is not None and ours is not None and theirs.institution_id == ours.institution_id


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
        seconds = reported_seconds(value)
        if seconds is not None:
            return seconds
    return None


def stated_offsets(db: Session, session_id: str, device_id: str) -> tuple[float, ...]:
    """The clock offsets ``device_id`` stated in its events about the session."""
    offsets = db.scalars(
        select(DeviceEvent.clock_offset_s)
        .where(
            DeviceEvent.session_id == session_id,
            DeviceEvent.device_id == device_id,
            DeviceEvent.clock_offset_s.is_not(None),
        )
        .distinct()
    ).all()
    return tuple(sorted(o for o in offsets if o is not None))


def reported_seconds(value: object) -> float | None:
    """A camera's figure of seconds, when it is one: a finite number from 0 to a day."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and 0 <= value <= MAX_CLIP_S else None


def _decoded(check: ClipCheck | None) -> DecodedClip | None:
    if check is None or check.checked_at is None:
        return None
    if check.error is None and check.decoded_frames is None:
        return None  # checked before decoded facts were kept: as good as not checked
    return DecodedClip(
        error=check.error,
        frames=check.decoded_frames or 0,
        duration_s=check.decoded_duration_s or 0.0,
        frame_rate=check.frame_rate or 0.0,
        black=bool(check.black),
        frozen=bool(check.frozen),
        moved=bool(check.moved),
        reference_similarity=check.reference_similarity,
        other_classroom=check.other_classroom_id,
        other_similarity=check.other_view_similarity,
    )


def window_clips(
    db: Session, cmd_id: str, session: ClassSession | None = None
) -> tuple[ClipFacts, ...]:
    """Every stored clip whose signed manifest answers ``cmd_id`` (of ``session``'s window:
    only those that count for it, ``clip_counts_for``), with what its check found and the
    window (if any) its bytes were first given for."""
    out = []
    for clip in db.scalars(select(Clip).where(Clip.cmd_id == cmd_id).order_by(Clip.id)).all():
        if session is not None and not clip_counts_for(db, clip, session):
            continue
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


def picture_use(photo: Photo) -> PictureUse:
    """A stored photo as one use of its picture (for ``earlier_use``)."""
    return PictureUse(photo.session_id, str(photo.id), photo.sha256, photo.phash, photo.received_at)


def other_uses(db: Session, session_id: str) -> list[PictureUse]:
    """Every photo of the other sessions, as uses of their pictures (hashes only)."""
    rows = db.execute(
        select(Photo.session_id, Photo.id, Photo.sha256, Photo.phash, Photo.received_at).where(
            Photo.session_id != session_id
        )
    )
    return [PictureUse(r.session_id, str(r.id), r.sha256, r.phash, r.received_at) for r in rows]


def photo_facts(photo: Photo) -> PhotoMatchFacts:
    """A stored photo as the photo rules see it."""
    return PhotoMatchFacts(
        photo_id=str(photo.id),
        lecturer_id=photo.lecturer_id,
        kind=PhotoKind(photo.kind),
        taken_at=photo.taken_at,
        location=Coordinate(photo.lat, photo.lon, Datum(photo.datum)),
        time_source=photo.time_source,
        place_source=photo.place_source,
        received_at=photo.received_at,
        sha256=photo.sha256,
        signature=photo.phash,
    )


def _classroom_facts(classroom: Classroom) -> ClassroomFacts:
    return ClassroomFacts(
        classroom.id,
        Coordinate(classroom.lat, classroom.lon, Datum(classroom.datum)),
        classroom.radius_m,
    )


def lecturer_elsewhere(db: Session, row: ClassSession) -> list[OtherSession]:
    """The lecturer's sessions in other classrooms within a day of ``row``, with their photos."""
    start = row.opened_at or row.scheduled_start
    near = select(ClassSession).where(
        ClassSession.lecturer_id == row.lecturer_id,
        ClassSession.id != row.id,
        ClassSession.classroom_id != row.classroom_id,
        ClassSession.scheduled_start > start - timedelta(days=1),
        ClassSession.scheduled_start < start + timedelta(days=1, seconds=row.duration_s),
    )
    out = []
    for other in db.scalars(near.order_by(ClassSession.id)):
        classroom = db.get(Classroom, other.classroom_id)
        if classroom is None:
            continue
        photos = db.scalars(select(Photo).where(Photo.session_id == other.id).order_by(Photo.id))
        out.append(
            OtherSession(
                SessionFacts(
                    session_id=other.id,
                    classroom_id=other.classroom_id,
                    device_id="",
                    lecturer_id=other.lecturer_id,
                    scheduled_start=other.scheduled_start,
                    preset_duration_s=other.duration_s,
                    opened_at=other.opened_at,
                    closed_at=other.closed_at,
                ),
                _classroom_facts(classroom),
                tuple(photo_facts(p) for p in photos),
            )
        )
    return out


class FactReader:
    """Reads everything the database knows about a session, as plain data."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def evidence(self, db: Session, row: ClassSession) -> SessionEvidence:
        """Everything the database knows about a session, as plain data."""
        device_id = session_camera(db, row) or ""
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
            windows.append(window_evidence(db, w, row))
        room = ClassroomFacts(
            classroom.id,
            Coordinate(classroom.lat, classroom.lon, Datum(classroom.datum)),
            classroom.radius_m,
        )
        photos = []
        own = db.scalars(select(Photo).where(Photo.session_id == row.id)).all()
        # Read once for the session (hashes only), not once per photo.
        others = other_uses(db, row.id) if own else []
        for photo in own:
            match_facts = photo_facts(photo)
            match = photo_match(
                match_facts,
                facts,
                room,
                tolerance_s=self.settings.photo_tolerance_s,
                app_upload_window_s=self.settings.photo_app_window_s,
            )
            reuse = earlier_use(picture_use(photo), others)
            reused = reuse.first.session_id if reuse else None
            photos.append(PhotoEvidence(match_facts, match, reused, reuse))
        booked = double_bookings(
            facts,
            room,
            [p.photo for p in photos],
            lecturer_elsewhere(db, row),
            tolerance_s=self.settings.photo_tolerance_s,
        )
        offline = offline_intervals(db, device_id, facts.start) if device_id else []
        return SessionEvidence(
            session=facts,
            recorded_s=recorded,
            reported_recorded_s=reported_recorded_seconds(db, row.id),
            session_clock_offsets=stated_offsets(db, row.id, device_id),
            device_clock_offset_s=row.device_clock_offset_s,
            windows=tuple(windows),
            photos=tuple(photos),
            double_bookings=tuple(booked),
            offline=tuple(offline),
            duration_tolerance_s=self.settings.duration_tolerance_s,
        )


def window_evidence(
    db: Session, w: SessionWindow, session: ClassSession | None = None
) -> WindowEvidence:
    """A window, the clips offered for it (of ``session``, the window's: those that count
    for it), when it was asked for, whether its cut failed."""
    return WindowEvidence(
        facts=WindowFacts(number=w.idx + 1, window=Window(w.start, w.end), cmd_id=w.cmd_id),
        clips=window_clips(db, w.cmd_id, session),
        requested_at=w.requested_at,
        cut_failed=w.failed_reason,
    )
