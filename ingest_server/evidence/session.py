"""One session's evidence whole: its windows with the clip that speaks for each (true bounds,
hash, manifest signature status, check), photos with their distance to the classroom, the
verdict with its reasons and history, and a timeline; reasons as the reader may see them
(``evidence.blind``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.clock import to_utc
from common.errors import ProtocolError, SignatureInvalid
from common.geo import Coordinate, Datum, distance_m
from common.signing import parse_signed_manifest
from ingest_server.evidence.blind import Reader
from ingest_server.evidence.files import clip_media_type
from ingest_server.evidence.listing import iso_or_none, reasons_view, session_summary
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
    FeedEvent,
    Institution,
    Photo,
    SessionWindow,
    Upload,
)
from ingest_server.rules.clip_proof import best_proof
from ingest_server.rules.reasons import DEFAULT_TIMEZONE
from ingest_server.rules.verdict import RecordingEventKind

# The feed event that records each change of a session's verdict (``ingest_server.verdicts``).
VERDICT_CHANGED = "verdict_changed"


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
        "checked_at": iso_or_none(check.checked_at),
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
        "cut_start": iso_or_none(clip.cut_start),
        "cut_end": iso_or_none(clip.cut_end),
        "clock_offset_s": clip.clock_offset_s,
        "true_start": iso_or_none(clip.cut_start - offset),
        "true_end": iso_or_none(clip.cut_end - offset),
        "duration_s": clip.duration_s,
        "frames": clip.frames,
        "width": clip.width,
        "height": clip.height,
        "codec": clip.codec,
        "sha256": clip.sha256,
        "size": clip.size,
        "stored_at": iso_or_none(clip.stored_at),
        "signature": signature_status(db, clip),
        "content_type": clip_media_type(clip),
        "check": _check_view(db.get(ClipCheck, clip.id)),
    }


def session_over(row: ClassSession, now: datetime) -> bool:
    """Whether the scheduled end has passed: only then may anyone see which minutes are
    checked (the windows), as the requests to the camera are sent only then too."""
    return row.scheduled_start + timedelta(seconds=row.duration_s) <= now


def shown_windows(
    db: Session, row: ClassSession, now: datetime, lang: str, tz: tzinfo, reader: Reader
) -> list[dict[str, Any]]:
    """The session's windows with the clip that speaks for each (``rules.clip_proof``) among
    the clips that count for the session (``facts.clip_counts_for``: another school's camera
    naming a window is never shown); none before the session is over."""
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
        evidence = window_evidence(db, w, row)
        proof = best_proof(evidence.facts, evidence.clips, installed or "", None, offsets)
        clip = db.get(Clip, proof.clip.clip_id) if proof else None
        clip_data = None
        if clip is not None and proof is not None:
            clip_data = clip_view(db, clip) | {
                "proof": str(proof.outcome),
                "proof_reasons": reasons_view(
                    [r.to_dict() for r in proof.reasons], lang, tz, reader
                ),
            }
        shown.append(
            {
                "index": w.idx,
                "number": w.idx + 1,
                "start": iso_or_none(w.start),
                "end": iso_or_none(w.end),
                "requested_at": iso_or_none(w.requested_at),
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
        "taken_at": iso_or_none(photo.taken_at),
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
        "received_at": iso_or_none(photo.received_at),
    }


def verdict_history(
    db: Session, session_id: str, lang: str, tz: tzinfo, reader: Reader
) -> list[dict[str, Any]]:
    """Every verdict the session had, oldest first, from the append-only feed (which keeps
    every param), its reasons as ``reader`` may see them."""
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
                "at": iso_or_none(event.at),
                "state": payload.get("state"),
                "reasons": reasons_view(payload.get("reasons") or [], lang, tz, reader),
            }
        )
    return out


def _intervals(pairs: Iterable[tuple[datetime, datetime | None]]) -> list[dict[str, str | None]]:
    return [{"start": iso_or_none(start), "end": iso_or_none(end)} for start, end in pairs]


def session_timeline(
    db: Session, row: ClassSession, windows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The session on one axis: as planned and as it happened, its (shown) windows, the
    recording gaps the camera reported and when the camera was offline, in server time."""
    end = row.scheduled_start + timedelta(seconds=row.duration_s)
    # Aware UTC on both ends whatever the camera wrote, so that gaps sort (and print) alike.
    gaps = [
        (to_utc(e.at), to_utc(e.end) if e.end is not None else None)
        for e in recording_events(db, row.id)
        if e.kind is RecordingEventKind.GAP
    ]
    device_id = session_camera(db, row)
    last = max(t for t in (end, row.closed_at) if t is not None)
    first = min(t for t in (row.scheduled_start, row.opened_at) if t is not None)
    offline = []
    if device_id:
        for interval in offline_intervals(db, device_id, first):
            if interval.start < last:
                offline.append((interval.start, interval.end))
    return {
        "scheduled_start": iso_or_none(row.scheduled_start),
        "scheduled_end": iso_or_none(end),
        "opened_at": iso_or_none(row.opened_at),
        "closed_at": iso_or_none(row.closed_at),
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
    db: Session,
    row: ClassSession,
    *,
    reader: Reader,
    now: datetime,
    lang: str,
    tz: tzinfo = DEFAULT_TIMEZONE,
) -> dict[str, Any]:
    """Everything ``reader`` is shown of one session, JSON-ready (keys in ``docs``/interface:
    session, classroom, windows, photos, verdict, timeline). The top level also carries the
    older flat view's fields (``id``, ``state``, ``opened_at``, ``windows_total``, ...), which
    replays and backends read."""
    summary = session_summary(db, row, reader=reader, lang=lang, tz=tz)
    room = db.get(Classroom, row.classroom_id)
    institution = db.get(Institution, room.institution_id) if room else None
    windows = shown_windows(db, row, now, lang, tz, reader)
    windows_total = len(
        db.scalars(select(SessionWindow.id).where(SessionWindow.session_id == row.id)).all()
    )
    photos = db.scalars(
        select(Photo).where(Photo.session_id == row.id).order_by(Photo.received_at, Photo.id)
    ).all()
    session = summary | {
        "device_id": session_camera(db, row),
        "opened_at": iso_or_none(row.opened_at),
        "closed_at": iso_or_none(row.closed_at),
        "recorded_s": row.recorded_s,
        "reported_recorded_s": row.reported_recorded_s,
        "device_clock_offset_s": row.device_clock_offset_s,
    }
    verdict = summary["verdict"] | {"history": verdict_history(db, row.id, lang, tz, reader)}
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
