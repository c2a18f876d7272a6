"""Evidence files for people and machines: a clip's video (or still), its signed manifest, a
photo's JPEG. A caller reads a clip of its own devices or sessions, a photo of its own sessions;
the bytes are served with ranges and the SHA-256 as ETag (``api.files``), and each download is
in the audit log once per viewing (``_audit_file``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ingest_server import audit
from ingest_server.api.deps import (
    ApiContext,
    Caller,
    CallerDep,
    device_scope,
    get_context,
    get_db,
    session_scope,
)
from ingest_server.api.files import evidence_file_response, file_responses, starts_the_file
from ingest_server.errors import StoreError
from ingest_server.evidence import clip_file, clip_media_type, photo_file, signature_status
from ingest_server.feed import session_clock
from ingest_server.models import (
    AuditEntry,
    ClassSession,
    Clip,
    Device,
    Photo,
    SessionWindow,
    Upload,
)

router = APIRouter()

# A file range read again by the same caller within this long is the same viewing: not
# logged again (a player asks for many ranges of one clip), whatever byte it starts at.
SAME_VIEWING = timedelta(hours=1)
MAX_ID = 2**63 - 1

ClipId = Annotated[int, Path(ge=1, le=MAX_ID)]
PhotoId = Annotated[int, Path(ge=1, le=MAX_ID)]


def actor_of(caller: Caller) -> str:
    """How a caller is named in the audit log."""
    return audit.api_actor(caller.role, caller.name, caller.token_id)


def clip_visible(db: Session, caller: Caller, clip: Clip) -> bool:
    """Whether ``caller`` may read ``clip``: its device is within the caller's devices, or it
    belongs to a session the caller may read (the session its manifest names, or the session
    of the window it answers). A clip with no session is its device's classroom's."""
    if caller.reads_everything:
        return True
    own_device = select(Device.device_id).where(
        Device.device_id == clip.device_id, device_scope(caller)
    )
    if db.scalar(own_device) is not None:
        return True
    windows = select(SessionWindow.session_id).where(SessionWindow.cmd_id == clip.cmd_id)
    sessions = [ClassSession.id == clip.session_id] if clip.session_id else []
    if clip.cmd_id:
        sessions.append(ClassSession.id.in_(windows))
    if not sessions:
        return False
    return (
        db.scalar(select(ClassSession.id).where(session_scope(caller), or_(*sessions)).limit(1))
        is not None
    )


def visible_clip(db: Session, caller: Caller, clip_id: int) -> Clip:
    """The clip if ``caller`` may read it; 404 if there is none, 403 if it is not theirs."""
    clip = db.get(Clip, clip_id)
    if clip is None:
        raise HTTPException(404, f"no clip {clip_id}")
    if not clip_visible(db, caller, clip):
        raise HTTPException(403, f"clip {clip_id} is not in the scope of this token")
    return clip


def visible_photo(db: Session, caller: Caller, photo_id: int) -> Photo:
    """The photo if ``caller`` may read its session; 404 if there is none, 403 if not."""
    photo = db.get(Photo, photo_id)
    if photo is None:
        raise HTTPException(404, f"no photo {photo_id}")
    mine = db.scalar(
        select(ClassSession.id).where(ClassSession.id == photo.session_id, session_scope(caller))
    )
    if mine is None:
        raise HTTPException(403, f"photo {photo_id} is not in the scope of this token")
    return photo


def _audit_file(
    request: Request,
    db: Session,
    context: ApiContext,
    caller: Caller,
    route: str,
    subject: tuple[str, str],
    details: dict[str, Any],
) -> None:
    """Log that the caller was sent an evidence file, once per viewing: a ``<video>`` element
    makes many range requests of one clip while it plays and seeks, and one row each would
    bury the log (and cost a write per request). A request that starts the file (no
    ``Range``, or a range from byte 0) is always logged; a later range only when this caller
    has no row for the file within ``SAME_VIEWING``, so a download that skips byte 0 is
    logged all the same."""
    actor = actor_of(caller)
    if not starts_the_file(request):
        with context.session_factory() as probe:  # no statement: only its factory's clock
            now = session_clock(probe).now()
        if _viewed_since(db, actor, subject, now - SAME_VIEWING):
            return
    # The range as asked (cut: the header is the caller's to fill, the log is for ever).
    asked = request.headers.get("range")
    details = {"download": True, "range": asked[:100] if asked else None, **details}
    _record_view(context, caller, route, subject, details)


def _viewed_since(db: Session, actor: str, subject: tuple[str, str], since: datetime) -> bool:
    """Whether the log holds a ``viewed`` row of ``actor`` for ``subject`` since ``since``."""
    subject_type, subject_id = subject
    seen = select(AuditEntry.seq).where(
        AuditEntry.subject_id == subject_id,
        AuditEntry.subject_type == subject_type,
        AuditEntry.actor == actor,
        AuditEntry.action == audit.AuditAction.VIEWED.value,
        AuditEntry.at >= since,
    )
    return db.scalar(seen.limit(1)) is not None


def _record_view(
    context: ApiContext,
    caller: Caller,
    route: str,
    subject: tuple[str, str],
    details: dict[str, Any] | None = None,
) -> None:
    """A ``viewed`` row for a clip or photo, in a write transaction of its own (the request
    reads through a session that must not write)."""
    with context.session_factory.begin() as writer:
        audit.record(
            writer,
            audit.AuditAction.VIEWED,
            subject[0],
            subject[1],
            actor_of(caller),
            {"route": route, **(details or {})},
        )


def _send(
    request: Request, path_of: Callable[[], FilePath], media_type: str, sha256: str
) -> Response:
    try:
        return evidence_file_response(request, path_of(), media_type, sha256)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        raise HTTPException(404, "the stored file is missing") from exc
    except StoreError as exc:
        # A bucket that cannot be read now (or whose object no longer matches its hash): the
        # evidence is not served, and the client may ask again.
        raise HTTPException(503, "the evidence store cannot serve this file now") from exc


@router.get(
    "/clips/{clip_id}/video",
    tags=["evidence"],
    response_class=Response,
    responses=file_responses("video/mp4", "image/jpeg"),
)
def get_clip_video(
    clip_id: ClipId,
    request: Request,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: CallerDep,
) -> Response:
    """The clip's file as stored (an MP4; a snapshot or reference still is a JPEG), with HTTP
    range requests (206 with ``Content-Range``; 416 past the end) so a browser can play and
    seek it; its ``ETag`` is its SHA-256. Only a clip the caller may read: one of its
    classrooms' devices or sessions. Logged once per viewing (``_audit_file``): the first
    request of a player (no range, or from byte 0), not each later range of the same file."""
    clip = visible_clip(db, caller, clip_id)
    response = _send(
        request, lambda: clip_file(context.store, clip), clip_media_type(clip), clip.sha256
    )
    if response.status_code != 304:
        details = {"session_id": clip.session_id, "sha256": clip.sha256}
        _audit_file(
            request, db, context, caller, "GET /clips/{id}/video", ("clip", str(clip.id)), details
        )
    return response


@router.get("/clips/{clip_id}/manifest", tags=["evidence"])
def get_clip_manifest(
    clip_id: ClipId,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: CallerDep,
) -> dict[str, Any]:
    """The clip's signed manifest exactly as the device sent it (``manifest``, a string:
    verify its signature over those bytes with ``public_key``, Ed25519, base64) and what the
    server finds of it now (``signature``: ``valid``, ``invalid`` or ``unknown_device``)."""
    clip = visible_clip(db, caller, clip_id)
    upload = db.get(Upload, (clip.upload_id, clip.device_id))
    device = db.get(Device, clip.device_id)
    _record_view(context, caller, "GET /clips/{id}/manifest", ("clip", str(clip.id)))
    return {
        "clip_id": clip.id,
        "device_id": clip.device_id,
        "upload_id": clip.upload_id,
        "sha256": clip.sha256,
        "manifest": upload.manifest if upload else None,
        "public_key": device.public_key if device else None,
        "signature": signature_status(db, clip),
    }


@router.get(
    "/photos/{photo_id}/image",
    tags=["evidence"],
    response_class=Response,
    responses=file_responses("image/jpeg"),
)
def get_photo_image(
    photo_id: PhotoId,
    request: Request,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: CallerDep,
) -> Response:
    """The photo's JPEG as the lecturer's phone sent it (``ETag``: its SHA-256), if the caller
    may read its session. Logged once per viewing, as clips are."""
    photo = visible_photo(db, caller, photo_id)
    response = _send(request, lambda: photo_file(context.store, photo), "image/jpeg", photo.sha256)
    if response.status_code != 304:
        details = {"session_id": photo.session_id, "sha256": photo.sha256}
        _audit_file(
            request,
            db,
            context,
            caller,
            "GET /photos/{id}/image",
            ("photo", str(photo.id)),
            details,
        )
    return response
