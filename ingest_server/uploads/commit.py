"""Commit: check the assembled file, and record a stored clip or a rejected upload.

The file is checked whole against the signed manifest before it is moved into the store; the
clip, its pending check, the upload's ``complete`` and the deletion of its staged chunks go in
one transaction, so a crash after the commit leaves the check queued, never forgotten.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.exc import IntegrityError

from common.ranges import Range
from common.schemas import Manifest, RejectReason
from ingest_server import feed
from ingest_server.db import SessionFactory
from ingest_server.models import Clip, ClipCheck, Upload, UploadState
from ingest_server.store import Store
from ingest_server.uploads import staging
from ingest_server.uploads.ledger import OpenUpload, UploadKey, bad_chunk_spans

log = logging.getLogger(__name__)


def staged_bad_spans(store: Store, upload: OpenUpload, name: str) -> list[Range] | None:
    """None if the staging file ``name`` is the one the manifest signs; else the spans of the
    chunks that do not match their hash (empty: every chunk matches but the file does not, so
    the manifest contradicts itself)."""
    manifest = upload.manifest
    whole, chunks = store.staging_digest(name, manifest.size, manifest.chunk_size)
    if whole == manifest.sha256:
        return None
    return bad_chunk_spans(manifest, chunks)


def clip_row(manifest: Manifest, upload_id: str, relative: str, now: datetime) -> Clip:
    """The clip as its signed manifest describes it, stored at ``relative``."""
    return Clip(
        upload_id=upload_id,
        device_id=manifest.device_id,
        session_id=manifest.session_id,
        cmd_id=manifest.cmd_id,
        clock_offset_s=manifest.clock_offset_s,
        kind=manifest.kind.value,
        sha256=manifest.sha256,
        size=manifest.size,
        path=relative,
        requested_start=manifest.requested_start,
        requested_end=manifest.requested_end,
        cut_start=manifest.cut_start,
        cut_end=manifest.cut_end,
        duration_s=manifest.duration_s,
        frames=manifest.frames,
        width=manifest.width,
        height=manifest.height,
        codec=manifest.codec,
        stored_at=now,
    )


def clip_event(clip: Clip) -> dict[str, object]:
    """The feed's ``clip_stored`` payload: which clip, of what, and where it lies in time."""
    return {
        "clip_id": clip.id,
        "upload_id": clip.upload_id,
        "device_id": clip.device_id,
        "kind": clip.kind,
        "cmd_id": clip.cmd_id,
        "sha256": clip.sha256,
        "size": clip.size,
        "cut_start": clip.cut_start.isoformat(),
        "cut_end": clip.cut_end.isoformat(),
        "duration_s": clip.duration_s,
    }


def record_clip(
    session_factory: SessionFactory, upload: OpenUpload, relative: str, now: datetime
) -> int | None:
    """Insert the clip, its pending check, and mark the upload complete, in one transaction;
    return the new clip's id (None if it was recorded already, here or by another worker)."""
    clip_id: int | None = None
    try:
        with session_factory.begin() as session:
            row = session.get(Upload, (upload.upload_id, upload.device_id), with_for_update=True)
            if row is not None and row.state != UploadState.COMPLETE.value:
                clip = clip_row(upload.manifest, upload.upload_id, relative, now)
                session.add(clip)
                session.flush()
                clip_id = clip.id
                session.add(ClipCheck(clip_id=clip.id, attempts=0))
                feed.append(session, "clip_stored", clip.session_id, clip_event(clip))
                row.state = UploadState.COMPLETE.value
                row.updated_at = now
                staging.drop(session, upload.key)
    except IntegrityError:
        # Another worker recorded the same clip first: that is the outcome we wanted.
        log.info("upload %s was recorded by another worker", upload.upload_id)
    return clip_id


def mark_rejected(
    session_factory: SessionFactory, key: UploadKey, reason: RejectReason, now: datetime
) -> None:
    """Record that the upload will never be accepted, and why."""
    device_id, upload_id = key
    with session_factory.begin() as session:
        row = session.get(Upload, (upload_id, device_id), with_for_update=True)
        if row is not None:
            row.state = UploadState.REJECTED.value
            row.reject_reason = reason.value
            row.updated_at = now
        staging.drop(session, key)
