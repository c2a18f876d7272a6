"""The session page's clips and photos, for a browser signed in with the session cookie.

A ``<video>`` or ``<img>`` element cannot send a bearer header, so the page points at these
routes, which take the caller from the cookie and then answer exactly as the API's file routes
do: the same scope (``evidence.scope``: a clip of a session the caller may read and filmed by
that session's camera, a still by where its camera was installed when it was taken, a photo of
a session they may read), the same range requests, ETag and 304, and the same audit rows
(once per viewing). They call the API's route functions rather than repeat them, so the two
cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from sqlalchemy.orm import Session

from ingest_server.api import evidence as api_evidence
from ingest_server.api.deps import ApiContext, get_context, get_db
from ingest_server.api.params import MAX_ROW_ID
from ingest_server.dashboard.auth import PageCaller

router = APIRouter()


def _file_id(value: str) -> int:
    """A clip's or photo's id from the path (as the API's: 1 to ``MAX_ROW_ID``); anything
    else is no such file (a page's 404, not a validation error in JSON)."""
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or not (
        1 <= int(value) <= MAX_ROW_ID
    ):
        raise HTTPException(404, f"no such file {value[:40]}")
    return int(value)


# HEAD as the API's file routes answer it: the headers alone, no viewing logged.
@router.head("/ui/clips/{clip_id}/video")
@router.get("/ui/clips/{clip_id}/video")
def clip_video(
    clip_id: str,
    request: Request,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: PageCaller,
) -> Response:
    """A clip's file for the page's player (``GET /api/v1/clips/{id}/video`` by cookie)."""
    return api_evidence.get_clip_video(
        clip_id=_file_id(clip_id), request=request, db=db, context=context, caller=caller
    )


@router.head("/ui/photos/{photo_id}/image")
@router.get("/ui/photos/{photo_id}/image")
def photo_image(
    photo_id: str,
    request: Request,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: PageCaller,
) -> Response:
    """A photo's JPEG for the page (``GET /api/v1/photos/{id}/image`` by cookie)."""
    return api_evidence.get_photo_image(
        photo_id=_file_id(photo_id), request=request, db=db, context=context, caller=caller
    )
