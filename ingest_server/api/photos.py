"""The lecturer's opening and closing photos (DESIGN.md §1 step 7)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session

from ingest_server import feed
from ingest_server.api.deps import (
    ApiContext,
    Caller,
    Role,
    get_context,
    get_db,
    require,
    visible_session,
)
from ingest_server.api.params import SessionId
from ingest_server.models import ClassSession, Photo
from ingest_server.photos import PhotoRejected, PhotoRejectReason, read_photo
from ingest_server.rules.photo_match import PhotoKind

router = APIRouter(tags=["photos"])

STATUS = {
    PhotoRejectReason.TOO_LARGE: 413,
    PhotoRejectReason.NOT_AN_IMAGE: 415,
}
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "HEIC": ".heic"}


@router.post("/sessions/{session_id}/photos/{kind}", status_code=201)
def upload_photo(
    session_id: SessionId,
    kind: PhotoKind,
    context: Annotated[ApiContext, Depends(get_context)],
    db: Annotated[Session, Depends(get_db)],
    caller: Annotated[Caller, Depends(require(Role.LECTURER))],
    file: Annotated[UploadFile, File(description="the photo, JPEG or PNG")],
    taken_at: Annotated[datetime | None, Form()] = None,
    lat: Annotated[float | None, Form()] = None,
    lon: Annotated[float | None, Form()] = None,
    datum: Annotated[str | None, Form(description="wgs84, gcj02 or bd09")] = None,
) -> dict[str, object]:
    """Take the opening or closing photo of a session from its lecturer's app (only the
    lecturer who teaches it: a photo is their own testimony)."""
    session = visible_session(db, caller, session_id)
    lecturer_id = session.lecturer_id
    settings = context.settings
    # A plain function (FastAPI runs it in a worker thread): Pillow, fsync and the verdict are
    # blocking work that must not stall the event loop the ingest consumer shares.
    data = file.file.read(settings.max_photo_bytes + 1)
    received_at = context.clock.now()
    try:
        facts = read_photo(
            data,
            app_taken_at=taken_at,
            app_lat=lat,
            app_lon=lon,
            app_datum=datum,
            max_bytes=settings.max_photo_bytes,
            local_tz=ZoneInfo(settings.timezone),
            now=received_at,
        )
    except PhotoRejected as exc:
        raise HTTPException(
            STATUS.get(exc.reason, 422), {"reason": exc.reason.value, "detail": exc.detail}
        ) from exc
    relative = (
        f"photos/{session_id}/{kind.value}-{facts.sha256[:32]}"
        f"{EXTENSIONS.get(facts.format, '.img')}"
    )
    context.store.put_bytes(relative, data)
    # The write is one short transaction (on SQLite it holds the write lock): the photo was read
    # and checked above, outside it.
    with context.session_factory.begin() as write:
        # The same bytes again for the same session and kind: a retry whose answer was lost.
        photo = write.scalar(
            select(Photo).where(
                Photo.session_id == session_id,
                Photo.kind == kind.value,
                Photo.sha256 == facts.sha256,
            )
        )
        if photo is not None:
            return _photo_body(photo, relative)
        photo = Photo(
            session_id=session_id,
            lecturer_id=lecturer_id,
            kind=kind.value,
            sha256=facts.sha256,
            phash=facts.phash,
            path=relative,
            taken_at=facts.taken_at,
            time_source=facts.time_source,
            lat=facts.lat,
            lon=facts.lon,
            datum=facts.datum,
            place_source=facts.place_source,
            width=facts.width,
            height=facts.height,
            received_at=received_at,
        )
        write.add(photo)
        write.flush()
        feed.append(write, "photo_received", session_id, _photo_body(photo, relative))
        # A photo can put the lecturer in two places at once: their other sessions near in
        # time are judged again too (rules.photo_match.double_bookings).
        near = write.scalars(
            select(ClassSession.id).where(
                ClassSession.lecturer_id == session.lecturer_id,
                ClassSession.scheduled_start > session.scheduled_start - timedelta(days=1),
                ClassSession.scheduled_start < session.scheduled_start + timedelta(days=1),
            )
        ).all()
    # Committed before the verdicts are recomputed on other connections.
    context.recompute({session_id, *near})
    return _photo_body(photo, relative)


def _photo_body(photo: Photo, relative: str) -> dict[str, object]:
    return {
        "id": photo.id,
        "session_id": photo.session_id,
        "kind": photo.kind,
        "sha256": photo.sha256,
        "taken_at": photo.taken_at.isoformat(),
        "time_source": photo.time_source,
        "lat": photo.lat,
        "lon": photo.lon,
        "datum": photo.datum,
        "place_source": photo.place_source,
        "path": relative,
    }
