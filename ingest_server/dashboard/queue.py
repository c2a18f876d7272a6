"""The review queue (``/ui/queue``): sessions to look at, newest first, narrowed by date,
institution, classroom, lecturer, verdict and whether the reader has marked them reviewed.

The list is ``evidence.session_page`` within the caller's scope (``api.deps.session_scope``),
exactly as ``GET /api/v1/sessions`` pages it, and is audited the same way (one ``viewed`` row
per page shown). Admins and supervisors see every session, an institution its own classrooms';
a lecturer's token cannot read the queue (a lecturer reads their own sessions through the app).
The "reviewed" mark is per person (``evidence.reviews.reviewer_of``: one token's), set with a
small POST form.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.orm import Session

from ingest_server import audit, evidence
from ingest_server.api.deps import ApiContext, get_context, get_db, session_scope, visible_session
from ingest_server.auth import Caller
from ingest_server.dashboard import i18n, templating
from ingest_server.dashboard.auth import REVIEWERS, check_origin, page_require, safe_next
from ingest_server.dashboard.forms import filter_id, form_day, path_id
from ingest_server.evidence.reviews import reviewer_of
from ingest_server.models import (
    ID_LENGTH,
    Classroom,
    ClassSession,
    Institution,
    Lecturer,
    SessionReview,
)

router = APIRouter()

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
REVIEWED_CHOICES = ("yes", "no")
ReviewerDep = Annotated[Caller, Depends(page_require(*REVIEWERS))]


@dataclass(frozen=True)
class QueueQuery:
    """The queue's GET form as typed values, and what could not be read (shown, then ignored)."""

    filter: evidence.SessionFilter
    reviewed: str | None
    after: str | None
    limit: int
    form: dict[str, str]
    bad_dates: list[str]


def _text(value: str | None, limit: int = ID_LENGTH) -> str | None:
    """A form value, or None when empty; an over-long one is kept cut (it matches nothing)."""
    value = (value or "").strip()
    return value[:limit] if value else None


def read_query(request: Request, tz: tzinfo) -> QueueQuery:
    """The filters of a queue request. Dates are days in the deployment's zone, both ends
    included: ``from=2026-11-01&to=2026-11-30`` is November as people there count it."""
    params = request.query_params
    bad: list[str] = []
    first = form_day(params.get("from"), bad)
    last = form_day(params.get("to"), bad)
    start = datetime.combine(first, time(), tz) if first else None
    end = datetime.combine(last + timedelta(days=1), time(), tz) if last else None
    verdict = _text(params.get("verdict"))
    reviewed = _text(params.get("reviewed"))
    typed = {name: _text(params.get(name)) for name in ("institution", "classroom", "lecturer")}
    flt = evidence.SessionFilter(
        start=start,
        end=end,
        institution_id=filter_id(typed["institution"]),
        classroom_id=filter_id(typed["classroom"]),
        lecturer_id=filter_id(typed["lecturer"]),
        verdict=verdict if verdict in evidence.VERDICTS else None,
    )
    form = {
        "from": first.isoformat() if first else "",
        "to": last.isoformat() if last else "",
        # As typed (the template escapes it), even when it could name no row.
        "institution": typed["institution"] or "",
        "classroom": typed["classroom"] or "",
        "lecturer": typed["lecturer"] or "",
        "verdict": flt.verdict or "",
        "reviewed": reviewed if reviewed in REVIEWED_CHOICES else "",
    }
    limit = params.get("limit", "")[:4]
    return QueueQuery(
        filter=flt,
        reviewed=form["reviewed"] or None,
        after=_text(params.get("after"), 512),
        limit=min(int(limit), MAX_PAGE_SIZE)
        if limit.isascii() and limit.isdigit() and int(limit) > 0
        else PAGE_SIZE,
        form=form,
        bad_dates=bad,
    )


def _reviewed_clause(reviewer: str, reviewed: str | None) -> ColumnElement[bool] | None:
    if reviewed is None:
        return None
    marked = select(SessionReview.session_id).where(SessionReview.reviewer == reviewer[:200])
    if reviewed == "yes":
        return ClassSession.id.in_(marked)
    return ClassSession.id.not_in(marked)


def filter_choices(db: Session, caller: Caller) -> dict[str, list[dict[str, str]]]:
    """The institutions, classrooms and lecturers the caller may filter by: all of them for
    those who read everything, an institution's own otherwise."""
    institutions = select(Institution).order_by(Institution.name, Institution.id)
    rooms = select(Classroom).order_by(Classroom.name, Classroom.id)
    lecturers = select(Lecturer).order_by(Lecturer.name, Lecturer.id)
    if not caller.reads_everything:
        own = caller.institution_id or ""
        institutions = institutions.where(Institution.id == own)
        rooms = rooms.where(Classroom.institution_id == own)
        lecturers = lecturers.where(Lecturer.institution_id == own)
    names = {i.id: i.name for i in db.scalars(institutions)}
    return {
        "institutions": [{"id": k, "name": v} for k, v in names.items()],
        "classrooms": [
            {"id": r.id, "name": f"{r.name} · {names.get(r.institution_id, r.institution_id)}"}
            for r in db.scalars(rooms)
        ],
        "lecturers": [{"id": p.id, "name": p.name} for p in db.scalars(lecturers)],
    }


@router.get("/ui/queue")
def review_queue(
    request: Request,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Caller, Depends(page_require(*REVIEWERS, refusal="error_403_queue"))],
) -> Response:
    """The review queue: one page of sessions with their verdicts and the reader's marks."""
    tz = templating.zone(context.settings.timezone)
    lang = i18n.pick(request)
    query = read_query(request, tz)
    reviewer = reviewer_of(caller)
    scope = session_scope(caller)
    extra = _reviewed_clause(reviewer, query.reviewed)
    if extra is not None:
        scope = and_(scope, extra)
    try:
        page = evidence.session_page(db, scope, query.filter, after=query.after, limit=query.limit)
    except evidence.BadCursor as exc:
        raise HTTPException(400, "bad cursor") from exc
    # The reader's scope without the reviewed filter: it decides which other sessions the
    # reasons may name.
    reader = evidence.Reader(db, session_scope(caller))
    rows: list[dict[str, Any]] = [
        evidence.session_summary(db, row, reader=reader, lang=lang, tz=tz) for row in page.sessions
    ]
    marked = evidence.reviewed_by(db, reviewer, [r["id"] for r in rows])
    choices = filter_choices(db, caller)
    db.close()
    audit.record_list_view(
        context.session_factory,
        audit.api_actor(caller.role, caller.name, caller.token_id),
        "GET /ui/queue",
        query.filter.to_query()
        | {"reviewed": query.reviewed, "after": query.after, "limit": query.limit},
        [r["id"] for r in rows],
    )
    next_url = (
        templating.page_url(request, after=page.next, lang=None) if page.next is not None else None
    )
    return templating.render(
        request,
        "queue.html",
        {
            "rows": rows,
            "marked": marked,
            "form": query.form,
            "bad_dates": query.bad_dates,
            "choices": choices,
            "verdicts": evidence.VERDICTS,
            "next_url": next_url,
            "first_url": templating.page_url(request, after=None, lang=None)
            if query.after
            else None,
            "here": templating.page_url(request, lang=None),
        },
        caller=caller,
    )


@router.post("/ui/sessions/{session_id}/review")
def set_reviewed(
    request: Request,
    session_id: str,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: ReviewerDep,
    reviewed: Annotated[str, Form(max_length=8)] = "1",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Set (``reviewed=1``) or clear (``reviewed=0``) the reader's own mark on a session they
    may read, then go back to the page the form was on."""
    check_origin(request)
    row = visible_session(db, caller, path_id(session_id))
    target_id = row.id
    db.close()
    with context.session_factory.begin() as write:
        if reviewed == "1":
            evidence.mark_reviewed(write, target_id, reviewer_of(caller), context.clock.now())
        else:
            evidence.unmark_reviewed(write, target_id, reviewer_of(caller))
    return RedirectResponse(safe_next(next or f"/ui/sessions/{target_id}"), status_code=303)
