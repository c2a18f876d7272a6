"""Evidence files for people and machines: a clip's video (or still), its signed manifest, a
photo's JPEG. A caller reads a clip of its own sessions (taken by their cameras) or, for a
session-less one, of its classrooms' cameras while installed there; a photo of its own sessions;
the bytes are served with ranges and the SHA-256 as ETag (``api.files``), and each download is
in the audit log once per viewing (``_audit_file``). Whose a clip is, whatever its manifest
claims, is ``evidence.scope``'s to say."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from sqlalchemy import select
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
from ingest_server.api.files import (
    evidence_file_response,
    file_responses,
    starts_the_file,
    store_errors,
)
from ingest_server.api.params import MAX_ROW_ID
from ingest_server.evidence import clip_file, clip_media_type, photo_file, signature_status
from ingest_server.evidence.scope import clip_home
from ingest_server.feed import session_clock
from ingest_server.models import (
    AuditEntry,
    ClassSession,
    Clip,
    Device,
    Photo,
    Upload,
)

router = APIRouter()

# A file range read again by the same caller within this long is the same viewing: not
# logged again (a player asks for many ranges of one clip), whatever byte it starts at.
SAME_VIEWING = timedelta(hours=1)

ClipId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
PhotoId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]


def actor_of(caller: Caller) -> str:
    """How a caller is named in the audit log."""
    return audit.api_actor(caller.role, caller.name, caller.token_id)


def clip_visible(db: Session, caller: Caller, clip: Clip) -> bool:
    """Whether ``caller`` may read ``clip`` (``evidence.scope.clip_home``): a clip naming a
    session when it counts for a session the caller may read (its device is that session's
    camera, or was a camera of the same school when it took it); a session-less clip when its
    device was installed in one of the caller's classrooms when it took it. A camera naming
    another school's session, or moved to another school, shows that school nothing; readers
    of everything see every clip, the attempt included."""
    if caller.reads_everything:
        return True
    home = clip_home(db, clip)
    if home.names_a_session:
        mine = select(ClassSession.id).where(
            ClassSession.id.in_(home.sessions), session_scope(caller)
        )
        return bool(home.sessions) and db.scalar(mine.limit(1)) is not None
    room = home.classroom
    if room is None:
        return False
    own_device = select(Device.device_id).where(
        Device.device_id == clip.device_id, Device.classroom_id == room, device_scope(caller)
    )
    return db.scalar(own_device) is not None


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
    has no download row of this file by this route within ``SAME_VIEWING`` — any other row
    (the manifest read, the session page) is no download, so a download that skips byte 0 is
    logged all the same."""
    actor = actor_of(caller)
    if not starts_the_file(request):
        with context.session_factory() as probe:  # no statement: only its factory's clock
            now = session_clock(probe).now()
        if _downloaded_since(db, actor, subject, route, now - SAME_VIEWING):
            return
    # The range as asked (cut: the header is the caller's to fill, the log is for ever).
    asked = request.headers.get("range")
    details = {"download": True, "range": asked[:100] if asked else None, **details}
    _record_view(context, caller, route, subject, details)


def _downloaded_since(
    db: Session, actor: str, subject: tuple[str, str], route: str, since: datetime
) -> bool:
    """Whether the log holds a download row (``_audit_file``'s: ``download`` set, the same
    ``route``) of ``actor`` for ``subject`` since ``since``."""
    subject_type, subject_id = subject
    seen = select(AuditEntry.details).where(
        AuditEntry.subject_id == subject_id,
        AuditEntry.subject_type == subject_type,
        AuditEntry.actor == actor,
        AuditEntry.action == audit.AuditAction.VIEWED.value,
        AuditEntry.at >= since,
    )
    for text in db.scalars(seen):
        try:
            details = json.loads(text)
        except (TypeError, ValueError):
            continue
        downloaded = isinstance(details, dict) and details.get("download") is True
        if downloaded and details.get("route") == route:
            return True
    return False


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
    with store_errors():
        return evidence_file_response(request, path_of(), media_type, sha256)


def _sent_bytes(request: Request, response: Response) -> bool:
    # A HEAD is answered with the headers alone and a 304 with none of the file: no evidence
    # was shown, so neither is a viewing to log (a client may probe a file's size and ETag).
    return request.method != "HEAD" and response.status_code != 304


# HEAD answers as GET does without the body (Starlette's FileResponse sends only headers);
# left out of the OpenAPI document, as HTTP implies it of every GET.
@router.head("/clips/{clip_id}/video", include_in_schema=False)
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
    seek it; its ``ETag`` is its SHA-256. Only a clip the caller may read: one naming a session
    of the caller's, taken by that session's camera or another camera of the same school, or
    one naming no session, taken by a camera while installed in one of the caller's classrooms.
    Logged once per viewing (``_audit_file``): the first request of a player (no range, or
    from byte 0), not each later download range of the same file by the same caller."""
    clip = visible_clip(db, caller, clip_id)
    response = _send(
        request, lambda: clip_file(context.store, clip), clip_media_type(clip), clip.sha256
    )
    if _sent_bytes(request, response):
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


@router.head("/photos/{photo_id}/image", include_in_schema=False)
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
    if _sent_bytes(request, response):
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
