"""Rows the ingest path would have written, for tests that start after it: a stored upload, its
clip, and the clip's check (pending, or done with what decoding found)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from common.schemas import ClipKind
from ingest_server.models import Clip, ClipCheck, Upload


def stored_upload(
    db: Session, device_id: str, upload_id: str, at: datetime, state: str = "complete", **manifest
) -> Upload:
    """An upload row in ``state`` (``manifest``: what its stored manifest JSON says)."""
    import json

    upload = Upload(
        upload_id=upload_id,
        device_id=device_id,
        manifest=json.dumps(manifest),
        size=1,
        sha256="0" * 64,
        chunk_size=1,
        state=state,
        received_ranges="[]",
        chunks_received=1,
        chunks_duplicate=0,
        created_at=at,
        updated_at=at,
    )
    db.add(upload)
    db.flush()
    return upload


def stored_clip(
    db: Session,
    device_id: str,
    upload_id: str,
    start: datetime,
    end: datetime,
    at: datetime,
    *,
    cmd_id: str | None = None,
    sha256: str = "0" * 64,
    path: str = "x",
    decoded: bool = False,
) -> Clip:
    """A stored clip of ``[start, end]`` (device clock, no offset) with its check: pending, or
    with ``decoded`` what the checker records for an honest 60 s clip at 15 fps."""
    stored_upload(db, device_id, upload_id, at, cmd_id=cmd_id)
    clip = Clip(
        upload_id=upload_id,
        device_id=device_id,
        cmd_id=cmd_id,
        kind=ClipKind.CLIP.value,
        sha256=sha256,
        size=1,
        path=path,
        cut_start=start,
        cut_end=end,
        duration_s=(end - start).total_seconds(),
        frames=900,
        width=1280,
        height=720,
        codec="h264",
        stored_at=at,
    )
    db.add(clip)
    db.flush()
    check = ClipCheck(clip_id=clip.id, attempts=0)
    if decoded:
        check.black, check.frozen, check.mean_luma, check.frozen_fraction = False, False, 100, 0
        check.decoded_frames, check.decoded_duration_s, check.frame_rate = 900, 60.0, 15.0
        check.attempts, check.checked_at = 1, at
    db.add(check)
    return clip
