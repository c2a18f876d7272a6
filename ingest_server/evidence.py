"""What people and machines are shown of the evidence: sessions filtered and paged, one
session's evidence whole (clips with their windows, true bounds, hashes and signature status;
photos with time, place and distance to the classroom; the verdict with its reasons and its
history; a timeline of windows, recording gaps and offline periods), statistics, the fleet, and
the per-user "reviewed" mark.

The API routes (``ingest_server.api.evidence``), the dashboard and the export all call these
functions, so that a person, a backend and an auditor see the same facts. Gathering from the
database lives here; what a fact means stays in the pure rules (``ingest_server.rules``), which
this module calls and never copies. Every time is an ISO-8601 UTC string: readers convert to
the deployment's zone.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from common.clock import to_utc
from common.errors import ProtocolError, SignatureInvalid
from common.geo import Coordinate, Datum, distance_m
from common.signing import parse_signed_manifest
from ingest_server.facts import (
    offline_intervals,
    recording_events,
    session_camera,
    stated_offsets,
    window_evidence,
)
from ingest_server.models import (
    Classroom,
    ClassSession,
    Clip,
    ClipCheck,
    Device,
    DeviceHealth,
    FeedEvent,
    Institution,
    Lecturer,
    Photo,
    SessionReview,
    SessionWindow,
    TrainingClass,
    Upload,
)
from ingest_server.rules.clip_proof import best_proof
from ingest_server.rules.reasons import DEFAULT_TIMEZONE, Reason, ReasonCode, render
from ingest_server.rules.verdict import RecordingEventKind
from ingest_server.store import EvidenceStore

# The feed event that records each change of a session's verdict (``ingest_server.verdicts``).
VERDICT_CHANGED = "verdict_changed"
VERDICTS = ("verified", "pending", "rejected")


def _iso(value: datetime | None) -> str | None:
    return to_utc(value).isoformat() if value is not None else None


# -- Listing sessions -------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionFilter:
    """What a list of sessions is narrowed to; every field optional. ``start`` and ``end``
    bound the scheduled start (``start`` included, ``end`` not), in UTC."""

    start: datetime | None = None
    end: datetime | None = None
    institution_id: str | None = None
    classroom_id: str | None = None
    lecturer_id: str | None = None
    verdict: str | None = None

    def where(self) -> list[ColumnElement[bool]]:
        """The filter as WHERE clauses on ``ClassSession``."""
        clauses: list[ColumnElement[bool]] = []
        if self.start is not None:
            clauses.append(ClassSession.scheduled_start >= to_utc(self.start))
        if self.end is not None:
            clauses.append(ClassSession.scheduled_start < to_utc(self.end))
        if self.institution_id is not None:
            rooms = select(Classroom.id).where(Classroom.institution_id == self.institution_id)
            clauses.append(ClassSession.classroom_id.in_(rooms))
        if self.classroom_id is not None:
            clauses.append(ClassSession.classroom_id == self.classroom_id)
        if self.lecturer_id is not None:
            clauses.append(ClassSession.lecturer_id == self.lecturer_id)
        if self.verdict is not None:
            clauses.append(ClassSession.verdict == self.verdict)
        return clauses

    def to_query(self) -> dict[str, str | None]:
        """The filter as the audit log and links spell it."""
        return {
            "start": _iso(self.start),
            "end": _iso(self.end),
            "institution": self.institution_id,
            "classroom": self.classroom_id,
            "lecturer": self.lecturer_id,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class SessionPage:
    """One page of sessions, newest scheduled start first (ties: greater id first), and the
    cursor of the next page (None on the last)."""

    sessions: list[ClassSession]
    next: str | None


class BadCursor(ValueError):
    """A cursor this module did not make (the API answers 422)."""


def encode_cursor(row: ClassSession) -> str:
    """The opaque cursor after ``row``: its scheduled start and id (keyset paging, so a page
    neither repeats nor skips a row when sessions are added meanwhile)."""
    raw = json.dumps([to_utc(row.scheduled_start).isoformat(), row.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (scheduled start, id) a cursor stands after; ``BadCursor`` if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        start_text, session_id = json.loads(raw)
        start = to_utc(datetime.fromisoformat(start_text))
    except (binascii.Error, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise BadCursor("not a cursor of this list") from exc
    if not isinstance(session_id, str) or start.tzinfo is None:
        raise BadCursor("not a cursor of this list")
    return start, session_id


def session_page(
    db: Session,
    scope: ColumnElement[bool],
    flt: SessionFilter,
    *,
    after: str | None,
    limit: int,
) -> SessionPage:
    """Up to ``limit`` sessions within ``scope`` (the caller's WHERE clause,
    ``api.deps.session_scope``) matching ``flt``, after cursor ``after``. The scope is part of
    the query, so a filter naming another institution's rows finds nothing."""
    query = select(ClassSession).where(scope, *flt.where())
    if after is not None:
        start, session_id = decode_cursor(after)
        query = query.where(
            or_(
                ClassSession.scheduled_start < start,
                and_(ClassSession.scheduled_start == start, ClassSession.id < session_id),
            )
        )
    query = query.order_by(ClassSession.scheduled_start.desc(), ClassSession.id.desc())
    rows = list(db.scalars(query.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return SessionPage(rows, encode_cursor(rows[-1]) if more and rows else None)


# -- One session ------------------------------------------------------------------------------


def reasons_view(raw: str | list[Any], lang: str, tz: tzinfo) -> list[dict[str, Any]]:
    """Stored reasons (JSON text or a list of {code, params}) with their sentences in
    ``lang``; a code this version does not know is shown by its code rather than dropped."""
    items = json.loads(raw or "[]") if isinstance(raw, str) else raw
    out = []
    for item in items:
        code, params = item.get("code"), item.get("params") or {}
        try:
            reason = Reason(code=ReasonCode(code), params=params)
            text, severity = render(reason, lang, tz=tz), str(reason.severity)
        except (ValueError, KeyError):
            text, severity = str(code), item.get("severity")
        out.append({"code": code, "severity": severity, "params": params, "text": text})
    return out


def session_summary(
    db: Session, row: ClassSession, *, lang: str, tz: tzinfo = DEFAULT_TIMEZONE
) -> dict[str, Any]:
    """A session as a list shows it: who, where, when, its state and verdict with reasons."""
    course = db.get(TrainingClass, row.class_id)
    room = db.get(Classroom, row.classroom_id)
    institution = db.get(Institution, room.institution_id) if room else None
    lecturer = db.get(Lecturer, row.lecturer_id)
    end = row.scheduled_start + timedelta(seconds=row.duration_s)
    return {
        "id": row.id,
        "class": {"id": row.class_id, "name": course.name if course else None},
        "classroom": {"id": row.classroom_id, "name": room.name if room else None},
        "institution": {
            "id": institution.id if institution else None,
            "name": institution.name if institution else None,
        },
        "lecturer": {"id": row.lecturer_id, "name": lecturer.name if lecturer else None},
        "scheduled_start": _iso(row.scheduled_start),
        "scheduled_end": _iso(end),
        "duration_s": row.duration_s,
        "state": row.state,
        "verdict": {
            "state": row.verdict,
            "at": _iso(row.verdict_at),
            "reasons": reasons_view(row.verdict_reasons, lang, tz),
        },
        "language": lang,
    }


def signature_status(db: Session, clip: Clip) -> str:
    """Whether the clip's stored signed manifest (``Upload.manifest``, exactly as received) is
    signed by its device's registered key and names this clip: ``valid``, ``invalid``, or
    ``unknown_device`` (no key to check it with). A key re-registered since reads ``invalid``
    for older clips: the check is against the key the server holds now."""
    device = db.get(Device, clip.device_id)
    if device is None or not device.public_key:
        return "unknown_device"
    upload = db.get(Upload, (clip.upload_id, clip.device_id))
    if upload is None:
        return "invalid"
    try:
        signed = parse_signed_manifest(upload.manifest.encode())
        signed.verify(device.public_key)
    except (ProtocolError, SignatureInvalid, ValueError):
        return "invalid"
    manifest = signed.manifest
    names_this_clip = (
        manifest.device_id == clip.device_id
        and manifest.upload_id == clip.upload_id
        and manifest.sha256 == clip.sha256
        and manifest.size == clip.size
    )
    return "valid" if names_this_clip else "invalid"


def _check_view(check: ClipCheck | None) -> dict[str, Any] | None:
    if check is None:
        return None
    return {
        "checked_at": _iso(check.checked_at),
        "black": check.black,
        "frozen": check.frozen,
        "moved": check.moved,
        "mean_luma": check.mean_luma,
        "frozen_fraction": check.frozen_fraction,
        "reference_similarity": check.reference_similarity,
        "other_classroom_id": check.other_classroom_id,
        "other_view_similarity": check.other_view_similarity,
        "decoded_frames": check.decoded_frames,
        "decoded_duration_s": check.decoded_duration_s,
        "frame_rate": check.frame_rate,
        "error": check.error,
    }


def clip_view(db: Session, clip: Clip) -> dict[str, Any]:
    """A stored clip: its cut bounds (device clock) and true bounds (server time, through the
    clock offset its manifest stated), hash, size and signature status, and its check."""
    offset = timedelta(seconds=clip.clock_offset_s)
    return {
        "id": clip.id,
        "upload_id": clip.upload_id,
        "device_id": clip.device_id,
        "kind": clip.kind,
        "cmd_id": clip.cmd_id,
        "cut_start": _iso(clip.cut_start),
        "cut_end": _iso(clip.cut_end),
        "clock_offset_s": clip.clock_offset_s,
        "true_start": _iso(clip.cut_start - offset),
        "true_end": _iso(clip.cut_end - offset),
        "duration_s": clip.duration_s,
        "frames": clip.frames,
        "width": clip.width,
        "height": clip.height,
        "codec": clip.codec,
        "sha256": clip.sha256,
        "size": clip.size,
        "stored_at": _iso(clip.stored_at),
        "signature": signature_status(db, clip),
        "content_type": clip_media_type(clip),
        "check": _check_view(db.get(ClipCheck, clip.id)),
    }


def session_over(row: ClassSession, now: datetime) -> bool:
    """Whether the scheduled end has passed: only then may anyone see which minutes are
    checked (the windows), as the requests to the camera are sent only then too."""
    return row.scheduled_start + timedelta(seconds=row.duration_s) <= now


def shown_windows(
    db: Session, row: ClassSession, now: datetime, lang: str, tz: tzinfo
) -> list[dict[str, Any]]:
    """The session's windows with the clip that speaks for each (``rules.clip_proof``); none
    before the session is over."""
    if not session_over(row, now):
        return []
    windows = db.scalars(
        select(SessionWindow).where(SessionWindow.session_id == row.id).order_by(SessionWindow.idx)
    ).all()
    installed = session_camera(db, row)
    offsets = stated_offsets(db, row.id, installed) if installed else ()
    shown = []
    for w in windows:
        if w.end > now:
            continue
        evidence = window_evidence(db, w)
        proof = best_proof(evidence.facts, evidence.clips, installed or "", None, offsets)
        clip = db.get(Clip, proof.clip.clip_id) if proof else None
        clip_data = None
        if clip is not None and proof is not None:
            clip_data = clip_view(db, clip) | {
                "proof": str(proof.outcome),
                "proof_reasons": reasons_view([r.to_dict() for r in proof.reasons], lang, tz),
            }
        shown.append(
            {
                "index": w.idx,
                "number": w.idx + 1,
                "start": _iso(w.start),
                "end": _iso(w.end),
                "requested_at": _iso(w.requested_at),
                "failed_reason": w.failed_reason,
                "clips_offered": len(evidence.clips),
                "clip": clip_data,
            }
        )
    return shown


def photo_view(photo: Photo, room: Classroom | None) -> dict[str, Any]:
    """A photo with where and when it was taken (and on whose word: EXIF, GPS or the app) and
    its distance to the classroom, both points in WGS-84 first (they may carry other datums)."""
    distance = within = None
    if room is not None:
        distance = distance_m(
            Coordinate(photo.lat, photo.lon, Datum(photo.datum)),
            Coordinate(room.lat, room.lon, Datum(room.datum)),
        )
        within = distance <= room.radius_m
    return {
        "id": photo.id,
        "session_id": photo.session_id,
        "kind": photo.kind,
        "taken_at": _iso(photo.taken_at),
        "time_source": photo.time_source,
        "lat": photo.lat,
        "lon": photo.lon,
        "datum": photo.datum,
        "place_source": photo.place_source,
        "distance_m": round(distance, 1) if distance is not None else None,
        "within_radius": within,
        "sha256": photo.sha256,
        "width": photo.width,
        "height": photo.height,
        "received_at": _iso(photo.received_at),
    }


def verdict_history(db: Session, session_id: str, lang: str, tz: tzinfo) -> list[dict[str, Any]]:
    """Every verdict the session had, oldest first, from the append-only feed."""
    rows = db.scalars(
        select(FeedEvent)
        .where(FeedEvent.session_id == session_id, FeedEvent.kind == VERDICT_CHANGED)
        .order_by(FeedEvent.seq)
    )
    out = []
    for event in rows:
        try:
            payload = json.loads(event.payload)
        except ValueError:
            continue
        if not isinstance(payload, dict):
            continue
        out.append(
            {
                "seq": event.seq,
                "at": _iso(event.at),
                "state": payload.get("state"),
                "reasons": reasons_view(payload.get("reasons") or [], lang, tz),
            }
        )
    return out


def _intervals(pairs: Iterable[tuple[datetime, datetime | None]]) -> list[dict[str, str | None]]:
    return [{"start": _iso(start), "end": _iso(end)} for start, end in pairs]


def session_timeline(
    db: Session, row: ClassSession, windows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The session on one axis: as planned and as it happened, its (shown) windows, the
    recording gaps the camera reported and when the camera was offline, in server time."""
    end = row.scheduled_start + timedelta(seconds=row.duration_s)
    gaps = [(e.at, e.end) for e in recording_events(db, row.id) if e.kind is RecordingEventKind.GAP]
    device_id = session_camera(db, row)
    last = max(t for t in (end, row.closed_at) if t is not None)
    first = min(t for t in (row.scheduled_start, row.opened_at) if t is not None)
    offline = []
    if device_id:
        for interval in offline_intervals(db, device_id, first):
            if interval.start < last:
                offline.append((interval.start, interval.end))
    return {
        "scheduled_start": _iso(row.scheduled_start),
        "scheduled_end": _iso(end),
        "opened_at": _iso(row.opened_at),
        "closed_at": _iso(row.closed_at),
        "windows": [{"index": w["index"], "start": w["start"], "end": w["end"]} for w in windows],
        "gaps": _intervals(sorted(gaps, key=lambda g: g[0])),
        "offline": _intervals(offline),
    }


_FLAT_KEYS = (
    "state",
    "opened_at",
    "closed_at",
    "recorded_s",
    "reported_recorded_s",
    "device_clock_offset_s",
)


def session_evidence(
    db: Session, row: ClassSession, *, now: datetime, lang: str, tz: tzinfo = DEFAULT_TIMEZONE
) -> dict[str, Any]:
    """Everything shown of one session, JSON-ready (keys in ``docs``/interface: session,
    classroom, windows, photos, verdict, timeline). The top level also carries the older flat
    view's fields (``id``, ``state``, ``opened_at``, ``windows_total``, ...), which replays and
    backends read."""
    summary = session_summary(db, row, lang=lang, tz=tz)
    room = db.get(Classroom, row.classroom_id)
    institution = db.get(Institution, room.institution_id) if room else None
    windows = shown_windows(db, row, now, lang, tz)
    windows_total = len(
        db.scalars(select(SessionWindow.id).where(SessionWindow.session_id == row.id)).all()
    )
    photos = db.scalars(
        select(Photo).where(Photo.session_id == row.id).order_by(Photo.received_at, Photo.id)
    ).all()
    session = summary | {
        "device_id": session_camera(db, row),
        "opened_at": _iso(row.opened_at),
        "closed_at": _iso(row.closed_at),
        "recorded_s": row.recorded_s,
        "reported_recorded_s": row.reported_recorded_s,
        "device_clock_offset_s": row.device_clock_offset_s,
    }
    verdict = summary["verdict"] | {"history": verdict_history(db, row.id, lang, tz)}
    return {
        # The fields of the older flat view, which replays and backends read.
        "id": row.id,
        "class_id": row.class_id,
        "classroom_id": row.classroom_id,
        "lecturer_id": row.lecturer_id,
        "scheduled_start": summary["scheduled_start"],
        "duration_s": row.duration_s,
        **{key: session[key] for key in _FLAT_KEYS},
        "session": session,
        "classroom": {
            "id": row.classroom_id,
            "name": room.name if room else None,
            "lat": room.lat if room else None,
            "lon": room.lon if room else None,
            "datum": room.datum if room else None,
            "radius_m": room.radius_m if room else None,
            "institution_id": room.institution_id if room else None,
            "institution_name": institution.name if institution else None,
        },
        "windows": windows,
        "windows_total": windows_total,
        "photos": [photo_view(p, room) for p in photos],
        "verdict": verdict,
        "timeline": session_timeline(db, row, windows),
        "language": lang,
    }


# -- Statistics -------------------------------------------------------------------------------


def _tally() -> dict[str, Any]:
    tally: dict[str, Any] = dict.fromkeys(("sessions", *VERDICTS), 0)
    return tally | {"verified_trainee_hours": 0.0}


def _count(tally: dict[str, Any], verdict: str, trainee_hours: float) -> None:
    tally["sessions"] += 1
    if verdict in VERDICTS:
        tally[verdict] += 1
    if verdict == "verified":
        tally["verified_trainee_hours"] += trainee_hours


def statistics(
    db: Session,
    scope: ColumnElement[bool],
    *,
    start: datetime | None,
    end: datetime | None,
    tz: tzinfo = DEFAULT_TIMEZONE,
) -> dict[str, Any]:
    """Sessions within ``scope`` scheduled in ``[start, end)``, counted by verdict: in all, by
    month (of the scheduled start in ``tz``), by institution and by classroom, with the
    verified trainee-hours (the class's trainees times the preset duration of each verified
    session: what a subsidy pays for)."""
    query = (
        select(
            ClassSession.scheduled_start,
            ClassSession.duration_s,
            ClassSession.verdict,
            Classroom.id.label("classroom_id"),
            Classroom.name.label("classroom_name"),
            Institution.id.label("institution_id"),
            Institution.name.label("institution_name"),
            TrainingClass.trainees,
        )
        .join(Classroom, Classroom.id == ClassSession.classroom_id)
        .join(Institution, Institution.id == Classroom.institution_id)
        .join(TrainingClass, TrainingClass.id == ClassSession.class_id)
        .where(scope, *SessionFilter(start=start, end=end).where())
    )
    total = _tally()
    months: dict[str, dict[str, Any]] = {}
    institutions: dict[str, dict[str, Any]] = {}
    classrooms: dict[str, dict[str, Any]] = {}
    for r in db.execute(query):
        hours = (r.trainees or 0) * r.duration_s / 3600.0
        month = to_utc(r.scheduled_start).astimezone(tz).strftime("%Y-%m")
        _count(total, r.verdict, hours)
        _count(months.setdefault(month, {"month": month} | _tally()), r.verdict, hours)
        _count(
            institutions.setdefault(
                r.institution_id,
                {"id": r.institution_id, "name": r.institution_name} | _tally(),
            ),
            r.verdict,
            hours,
        )
        _count(
            classrooms.setdefault(
                r.classroom_id,
                {
                    "id": r.classroom_id,
                    "name": r.classroom_name,
                    "institution_id": r.institution_id,
                }
                | _tally(),
            ),
            r.verdict,
            hours,
        )
    for tally in (total, *months.values(), *institutions.values(), *classrooms.values()):
        tally["verified_trainee_hours"] = round(tally["verified_trainee_hours"], 2)
    return {
        "start": _iso(start),
        "end": _iso(end),
        "timezone": str(tz),
        "total": total,
        "by_month": [months[k] for k in sorted(months)],
        "by_institution": [institutions[k] for k in sorted(institutions)],
        "by_classroom": [classrooms[k] for k in sorted(classrooms)],
    }


# -- The fleet --------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def fleet(
    db: Session, scope: ColumnElement[bool], *, now: datetime, heartbeat_timeout_s: float
) -> list[dict[str, Any]]:
    """Every device within ``scope`` (``api.deps.device_scope``) with its latest health:
    online (retained status online and a heartbeat within the timeout), when it was last
    heard, signal, disk, clock skew (its stated offset, device minus server), whether it
    records, and the raw heartbeat."""
    out = []
    for device in db.scalars(select(Device).where(scope).order_by(Device.device_id)):
        health = db.get(DeviceHealth, device.device_id)
        room = db.get(Classroom, device.classroom_id) if device.classroom_id else None
        try:
            beat = json.loads(health.heartbeat) if health and health.heartbeat else None
        except ValueError:
            beat = None
        beat = beat if isinstance(beat, dict) else None
        last = health.last_heartbeat_at if health else None
        online = bool(
            health
            and health.status == "online"
            and (last is None or (now - last).total_seconds() <= heartbeat_timeout_s)
        )
        modem = (beat or {}).get("modem") or {}
        modem = modem if isinstance(modem, dict) else {}
        out.append(
            {
                "device_id": device.device_id,
                "enabled": device.enabled,
                "classroom_id": device.classroom_id,
                "classroom": {"id": room.id, "name": room.name} if room else None,
                "institution_id": room.institution_id if room else None,
                "online": online,
                "status": health.status if health else None,
                "status_at": _iso(health.status_at) if health else None,
                "last_heartbeat_at": _iso(last),
                "heartbeat_age_s": (now - last).total_seconds() if last else None,
                "signal": {
                    "rssi_dbm": _number(modem.get("rssi_dbm")),
                    "rsrp_dbm": _number(modem.get("rsrp_dbm")),
                    "rsrq_db": _number(modem.get("rsrq_db")),
                    "sinr_db": _number(modem.get("sinr_db")),
                    "operator": modem.get("operator"),
                    "access_technology": modem.get("access_technology"),
                    "registration": modem.get("registration"),
                },
                "disk": {
                    "free_bytes": _number((beat or {}).get("disk_free_bytes")),
                    "total_bytes": _number((beat or {}).get("disk_total_bytes")),
                    "storage_low": (beat or {}).get("storage_low"),
                },
                "clock_skew_s": _number((beat or {}).get("clock_offset_s")),
                "clock_source": (beat or {}).get("clock_source"),
                "recording": (beat or {}).get("recording"),
                "session_id": (beat or {}).get("session_id"),
                "firmware": (beat or {}).get("firmware"),
                "heartbeat": beat,
            }
        )
    return out


# -- The "reviewed" mark ----------------------------------------------------------------------


def mark_reviewed(db: Session, session_id: str, reviewer: str, now: datetime) -> None:
    """Mark ``session_id`` reviewed by ``reviewer`` (``role:name``); marking twice keeps the
    first time. Insert-or-nothing in one statement, so two requests at once cannot collide."""
    values = {"session_id": session_id, "reviewer": reviewer[:200], "reviewed_at": to_utc(now)}
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        db.execute(pg_insert(SessionReview).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        db.execute(sqlite_insert(SessionReview).values(values).on_conflict_do_nothing())
    elif (
        db.scalar(
            select(SessionReview.id).where(
                SessionReview.session_id == session_id, SessionReview.reviewer == reviewer[:200]
            )
        )
        is None
    ):
        db.add(SessionReview(**values))


def unmark_reviewed(db: Session, session_id: str, reviewer: str) -> None:
    """Take ``reviewer``'s mark off ``session_id`` (nothing if there is none)."""
    db.execute(
        delete(SessionReview).where(
            SessionReview.session_id == session_id, SessionReview.reviewer == reviewer[:200]
        )
    )


def reviewed_by(db: Session, reviewer: str, session_ids: Iterable[str]) -> set[str]:
    """Which of ``session_ids`` ``reviewer`` has marked reviewed."""
    ids = list(session_ids)
    if not ids:
        return set()
    return set(
        db.scalars(
            select(SessionReview.session_id).where(
                SessionReview.reviewer == reviewer[:200], SessionReview.session_id.in_(ids)
            )
        )
    )


# -- Files ------------------------------------------------------------------------------------


def clip_media_type(clip: Clip) -> str:
    """The clip's content type: an MP4, or a JPEG for a snapshot or reference still."""
    return "image/jpeg" if clip.path.lower().endswith((".jpg", ".jpeg")) else "video/mp4"


def clip_file(store: EvidenceStore, clip: Clip) -> Path:
    """The stored file of ``clip``; ``ValueError`` if its path would leave the store."""
    return store.path_of(clip.path)


def photo_file(store: EvidenceStore, photo: Photo) -> Path:
    """The stored JPEG of ``photo``; ``ValueError`` if its path would leave the store."""
    return store.path_of(photo.path)
