"""The evidence API (issue 10): sessions filtered and paged, one session's evidence, the
fleet, statistics and the per-user "reviewed" mark; the files (clip video, signed manifest,
photo image) are ``api.evidence_files``'s routes on the same router. The gathering is
``ingest_server.evidence``'s (the dashboard and the export call the same functions); here are
scope, language, audit and HTTP. Every read of evidence is audited: a list once per request, a
session per view."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query
from pydantic import AfterValidator
from sqlalchemy import select
from sqlalchemy.orm import Session

from ingest_server import audit
from ingest_server.api import evidence_files
from ingest_server.api.deps import (
    ApiContext,
    Caller,
    CallerDep,
    Role,
    device_scope,
    get_context,
    get_db,
    require,
    session_scope,
    visible_session,
)
from ingest_server.api.evidence_files import actor_of, get_clip_video, get_photo_image
from ingest_server.api.params import AcceptLanguage, Id, Lang, SessionId, UtcBound
from ingest_server.evidence import (
    BadCursor,
    Reader,
    SessionFilter,
    decode_cursor,
    fleet,
    mark_reviewed,
    reviewed_by,
    session_evidence,
    session_page,
    session_summary,
    statistics,
    unmark_reviewed,
)
from ingest_server.evidence.reviews import reviewer_of
from ingest_server.models import SessionReview
from ingest_server.rules.reasons import pick_language

# The file routes' functions are named here too: the dashboard's media routes (cookie sign-in)
# call them.
__all__ = ["get_clip_video", "get_photo_image", "router"]

router = APIRouter()
# The file routes are part of this router (the app includes one router for the evidence API).
router.include_router(evidence_files.router)


def _cursor(value: str | None) -> str | None:
    if value is not None:
        try:
            decode_cursor(value)
        except BadCursor as exc:
            raise ValueError(str(exc)) from exc
    return value


Cursor = Annotated[
    str | None,
    Query(max_length=512, description="``next`` of the previous page"),
    AfterValidator(_cursor),
]


def _zone(context: ApiContext) -> ZoneInfo:
    return ZoneInfo(context.settings.timezone)


@router.get("/sessions", tags=["sessions"])
def list_sessions(
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: CallerDep,
    start: UtcBound = None,
    end: UtcBound = None,
    institution: Id | None = None,
    classroom: Id | None = None,
    lecturer: Id | None = None,
    verdict: Literal["verified", "pending", "rejected"] | None = None,
    after: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    accept_language: AcceptLanguage = None,
    lang: Lang = None,
) -> dict[str, Any]:
    """Sessions the caller may read, newest scheduled start first, filtered by scheduled
    start (``start`` included, ``end`` not), institution, classroom, lecturer and verdict;
    pass ``next`` back as ``after`` for the following page (``null``: the last). Filtering on
    another institution's rows gives an empty page, never their rows. Each session comes with
    ``reviewed``: whether this caller marked it reviewed."""
    flt = SessionFilter(start, end, institution, classroom, lecturer, verdict)
    page = session_page(db, session_scope(caller), flt, after=after, limit=limit)
    language, tz = pick_language(lang or accept_language), _zone(context)
    reviewed = reviewed_by(db, reviewer_of(caller), [row.id for row in page.sessions])
    reader = Reader(db, session_scope(caller))
    sessions = [
        session_summary(db, row, reader=reader, lang=language, tz=tz)
        | {"reviewed": row.id in reviewed}
        for row in page.sessions
    ]
    # One row per request, not per session shown (a page is up to 500 of them).
    audit.record_list_view(
        context.session_factory,
        actor_of(caller),
        "GET /sessions",
        flt.to_query() | {"after": after, "limit": limit},
        [s["id"] for s in sessions],
    )
    return {"sessions": sessions, "next": page.next}


@router.get("/sessions/{session_id}", tags=["sessions"])
def get_session(
    session_id: SessionId,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: CallerDep,
    accept_language: AcceptLanguage = None,
    lang: Lang = None,
) -> dict[str, Any]:
    """One session's evidence (``ingest_server.evidence.session_evidence``): its clips with
    window, true bounds, hash and signature status (windows only once the session is over),
    photos with time, place and distance to the classroom, the verdict with reasons and
    history, and a timeline. zh-CN by default; ``Accept-Language`` or ``?lang=en`` switch."""
    row = visible_session(db, caller, session_id)
    view = session_evidence(
        db,
        row,
        reader=Reader(db, session_scope(caller)),
        now=context.clock.now(),
        lang=pick_language(lang or accept_language),
        tz=_zone(context),
    )
    view["reviewed"] = bool(reviewed_by(db, reviewer_of(caller), [row.id]))
    audit.record_view(context.session_factory, actor_of(caller), "GET /sessions/{id}", row.id)
    return view


# -- Fleet and statistics ---------------------------------------------------------------------


@router.get("/devices", tags=["fleet"])
def list_devices(
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Caller, Depends(require(Role.ADMIN, Role.SUPERVISOR, Role.INSTITUTION))],
) -> list[dict[str, Any]]:
    """Every device the caller may see (an institution: those in its classrooms): online or
    not (retained status and heartbeat timeout), last heartbeat, signal, disk, clock skew,
    recording, and the raw heartbeat. Audited: one row per request."""
    devices = fleet(
        db,
        device_scope(caller),
        now=context.clock.now(),
        heartbeat_timeout_s=context.settings.heartbeat_timeout_s,
    )
    db.close()
    audit.record_overview(
        context.session_factory, actor_of(caller), "GET /devices", {"shown": len(devices)}
    )
    return devices


@router.get("/statistics", tags=["statistics"])
def get_statistics(
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Caller, Depends(require(Role.ADMIN, Role.SUPERVISOR, Role.INSTITUTION))],
    start: UtcBound = None,
    end: UtcBound = None,
) -> dict[str, Any]:
    """Sessions scheduled in ``[start, end)`` that the caller may read (an institution: its
    own), counted by verdict in all, by month (in the deployment's zone), by institution and
    by classroom, with verified trainee-hours. Audited: one row per request."""
    figures = statistics(db, session_scope(caller), start=start, end=end, tz=_zone(context))
    db.close()
    query = {"start": start, "end": end}
    audit.record_overview(
        context.session_factory,
        actor_of(caller),
        "GET /statistics",
        {"query": {k: v for k, v in query.items() if v is not None}},
    )
    return figures


# -- The reviewed mark ------------------------------------------------------------------------

Reviewer = Annotated[Caller, Depends(require(Role.ADMIN, Role.SUPERVISOR, Role.INSTITUTION))]


def _review_state(db: Session, session_id: str, reviewer: str) -> dict[str, Any]:
    mark = db.scalar(
        select(SessionReview).where(
            SessionReview.session_id == session_id, SessionReview.reviewer == reviewer
        )
    )
    return {
        "session_id": session_id,
        "reviewer": reviewer,
        "reviewed": mark is not None,
        "reviewed_at": mark.reviewed_at.isoformat() if mark else None,
    }


@router.put("/sessions/{session_id}/review", tags=["sessions"])
def put_review(
    session_id: SessionId,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Reviewer,
) -> dict[str, Any]:
    """Mark the session reviewed by this caller (its own mark: others' are theirs). Marking
    again keeps the first time."""
    visible_session(db, caller, session_id)
    with context.session_factory.begin() as writer:
        mark_reviewed(writer, session_id, reviewer_of(caller), context.clock.now())
        return _review_state(writer, session_id, reviewer_of(caller))


@router.delete("/sessions/{session_id}/review", tags=["sessions"])
def delete_review(
    session_id: SessionId,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Reviewer,
) -> dict[str, Any]:
    """Take this caller's reviewed mark off the session (nothing if there was none)."""
    visible_session(db, caller, session_id)
    with context.session_factory.begin() as writer:
        unmark_reviewed(writer, session_id, reviewer_of(caller))
        return _review_state(writer, session_id, reviewer_of(caller))
