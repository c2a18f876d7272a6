"""One session's page (``/ui/sessions/{id}``): everything the verdict rests on, for a person.

The facts are ``evidence.session_evidence`` — the same dict ``GET /api/v1/sessions/{id}``
answers — drawn for people: the checked windows with their clips playable in the browser, the
lecturer's photos, a distance diagram of where the photos were taken (no map tiles: the server
needs no internet), a timeline in the deployment's zone, the verdict with every reason and its
evidence, the verdict's history, and the reader's "reviewed" mark. Any caller who may read the
session through the API may open its page (``api.deps.visible_session``: 404 for no such
session, 403 for another's); every opening is audited as the API's is.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from ingest_server import audit, evidence
from ingest_server.api import exports
from ingest_server.api.deps import (
    ApiContext,
    get_context,
    get_db,
    session_scope,
    visible_session,
)
from ingest_server.auth import Caller
from ingest_server.dashboard import diagrams, i18n, templating
from ingest_server.dashboard.auth import REVIEWERS, PageCaller, page_require
from ingest_server.dashboard.forms import path_id
from ingest_server.evidence.reviews import reviewer_of

router = APIRouter()


def _gather(
    request: Request,
    db: Session,
    context: ApiContext,
    caller: Caller,
    session_id: str,
    route: str,
) -> tuple[dict[str, Any], bool]:
    """The session's evidence in the reader's language and zone, and the reader's mark; the
    reading is audited as a view by ``route``."""
    row = visible_session(db, caller, path_id(session_id))
    tz = templating.zone(context.settings.timezone)
    facts = evidence.session_evidence(
        db,
        row,
        reader=evidence.Reader(db, session_scope(caller)),
        now=context.clock.now(),
        lang=i18n.pick(request),
        tz=tz,
    )
    marked = bool(evidence.reviewed_by(db, reviewer_of(caller), [row.id]))
    db.close()
    audit.record_view(
        context.session_factory,
        audit.api_actor(caller.role, caller.name, caller.token_id),
        route,
        facts["id"],
    )
    return facts, marked


def _ended(facts: dict[str, Any], now: datetime) -> bool:
    end = templating.parse_time(facts["session"]["scheduled_end"])
    return end is not None and end <= now


def download_name(session_id: str) -> str:
    """A file name for the session's download: its id with anything but letters, digits, dot,
    dash and underscore replaced (ids come from the setup file, quotes and all)."""
    return "session-" + re.sub(r"[^A-Za-z0-9._-]", "_", session_id)[:80] + ".json"


@router.get("/ui/sessions/{session_id}")
def session_page(
    request: Request,
    session_id: str,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: PageCaller,
) -> Response:
    """The session's evidence page."""
    facts, marked = _gather(request, db, context, caller, session_id, "GET /ui/sessions/{id}")
    tz = templating.zone(context.settings.timezone)
    return templating.render(
        request,
        "session.html",
        {
            "s": facts,
            "summary": facts["session"],
            "marked": marked,
            "may_review": caller.role in REVIEWERS,
            "may_export": caller.role in REVIEWERS,
            "map": diagrams.distance_map(facts["classroom"], facts["photos"]),
            "timeline": diagrams.session_timeline(
                facts["timeline"], facts["photos"], tz, context.clock.now()
            ),
            "session_over": _ended(facts, context.clock.now()),
            "here": request.url.path,
        },
        caller=caller,
    )


@router.get("/ui/sessions/{session_id}/evidence.json")
def session_json(
    request: Request,
    session_id: str,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: PageCaller,
) -> Response:
    """The same evidence as JSON (what ``GET /api/v1/sessions/{id}`` answers), downloadable
    from the page with the session cookie; audited as a view."""
    facts, _ = _gather(
        request, db, context, caller, session_id, "GET /ui/sessions/{id}/evidence.json"
    )
    body = json.dumps(facts, ensure_ascii=False, indent=2)
    return Response(
        body,
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="{download_name(facts["id"])}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/ui/sessions/{session_id}/export")
def session_export(
    request: Request,
    session_id: str,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Caller, Depends(page_require(*REVIEWERS))],
) -> Response:
    """The session's verifiable archive (``GET /api/v1/sessions/{id}/export`` by cookie: the
    same scope, refusals and audit row)."""
    return exports.export_session(
        session_id=path_id(session_id),
        context=context,
        db=db,
        caller=caller,
        lang=i18n.pick(request),
    )
