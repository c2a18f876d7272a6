"""Route dependencies (DESIGN.md §3, as the FastAPI template's ``api/deps.py``): the running
server's context, a database session, the caller behind a bearer token and what that caller
may see. Routers import this module; the app imports the routers; nothing imports back.

Who may do what (roles in ``ingest_server.auth``):

| route | admin | supervisor | institution | lecturer |
|---|---|---|---|---|
| ``GET /sessions``, ``GET /sessions/{id}`` | all | all | its classrooms' | own |
| ``GET /clips/{id}/video``, ``/manifest`` | all | all | its devices' or sessions' | own sessions' |
| ``GET /photos/{id}/image`` | all | all | its classrooms' sessions' | own sessions' |
| ``PUT``, ``DELETE /sessions/{id}/review`` (own mark) | all | all | its classrooms' | 403 |
| ``POST /sessions/{id}/open``, ``/close`` | all | 403 | its classrooms' | own |
| ``POST /sessions/{id}/photos/{kind}`` | 403 | 403 | 403 | own |
| ``GET /devices`` | all | all | in its classrooms | 403 |
| ``POST /devices/{id}/snapshot`` and its follow-up (roll call) | all | all | its classrooms | 403 |
| ``GET /statistics`` | all | all | its classrooms' sessions | 403 |
| ``GET /sessions/{id}/export``, ``POST /exports`` | all | all | its classrooms' | 403 |
| ``GET /feed`` | all | all | 403 | 403 |
| ``GET /metrics`` (Prometheus) | yes | yes | 403 | 403 |

A photo is the lecturer's own testimony, so only the lecturer of the session uploads it. A roll
call (a camera's still now) only looks, so a supervisor may ask one, unlike open and close. An
export is a case file for an auditor: the lecturer's own sessions are judged on it, not by it. The
feed is the supervision backend's integration stream; an institution reads its sessions
instead. The reviewed mark is a reviewer's (the review queue's) and statistics count whole
institutions: neither is a lecturer's business. Metrics speak of the whole fleet, so only the
roles that read everything scrape them (docs/metrics.md: a supervisor token in the scraper's
``authorization``). Lists are filtered in the query, so a scoped caller never pages through
others' rows, even when it filters on them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import ColumnElement, Select, false, select, true
from sqlalchemy.orm import Session

from common.clock import Clock, SystemClock
from common.commands import Command
from ingest_server.auth import Caller, Role, bearer_token, resolve_token
from ingest_server.db import SessionFactory, reader_factory
from ingest_server.metrics import LiveIngest
from ingest_server.models import Classroom, ClassSession, Device
from ingest_server.settings import Settings
from ingest_server.store import EvidenceStore

__all__ = ["ApiContext", "Caller", "Role", "get_caller", "get_context", "get_db"]


@dataclass
class ApiContext:
    """What the routes need from the running server."""

    settings: Settings
    session_factory: SessionFactory
    store: EvidenceStore
    # Recompute these sessions' verdicts now (the photo routes call it after a new photo).
    recompute: Callable[[set[str]], None]
    # Send a command to a device (open/close by the lecturer); None where no broker is wired.
    send_command: Callable[[str, Command], None] | None = None
    # What "now" is: the windows a view may show depend on it.
    clock: Clock = field(default_factory=SystemClock)
    # The ingest running in this process, whose counters /metrics shows; None for an API alone.
    live_ingest: LiveIngest | None = None


def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


def get_db(context: Annotated[ApiContext, Depends(get_context)]) -> Iterator[Session]:
    """A session for reading: it holds no write lock however long the request takes."""
    with reader_factory(context.session_factory)() as db:
        yield db


# Declared in the OpenAPI document as the ``bearer`` security scheme of every route using it.
bearer_scheme = HTTPBearer(
    scheme_name="bearer",
    description="An API token (`classcam-server token create`) or a lecturer's app token.",
    auto_error=False,
)

UNAUTHENTICATED = {"WWW-Authenticate": "Bearer"}


# Routes whose body only some roles may send, for the body guard to refuse on the headers
# (FastAPI reads a multipart form before the route's ``require`` runs): (method, path, roles).
PHOTO_UPLOADERS = frozenset({Role.LECTURER})
BODY_ROLES: tuple[tuple[str, re.Pattern[str], frozenset[Role]], ...] = (
    ("POST", re.compile(r"/api/v1/sessions/[^/]+/photos/[^/]+/?"), PHOTO_UPLOADERS),
)


def token_role(context: ApiContext, token: str) -> Role | None:
    """The role ``token`` lets in now, or None (the body guard asks before reading a body)."""
    with reader_factory(context.session_factory)() as db:
        caller = resolve_token(db, token, context.clock.now())
        return caller.role if caller is not None else None


def get_caller(
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    """The caller behind ``Authorization: Bearer …``: 401 without a token that lets anyone in."""
    token = bearer_token(f"Bearer {credentials.credentials}" if credentials else None)
    if token is None:
        raise HTTPException(401, "missing token (Authorization: Bearer …)", UNAUTHENTICATED)
    try:
        caller = resolve_token(db, token, context.clock.now())
    finally:
        # Give the connection back at once (the route's next read takes one again): a request
        # holding a pooled connection while it waits for a worker thread or a long-poll could
        # otherwise take the whole pool from the threads that would release it (~60 long-polls
        # at once wedged the API for the pool's 30 s timeout).
        db.close()
    if caller is None:
        raise HTTPException(401, "unknown, expired or revoked token", UNAUTHENTICATED)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def require(*roles: Role) -> Callable[[Caller], Caller]:
    """A dependency admitting only ``roles`` (403 for any other valid token)."""

    def admitted(caller: CallerDep) -> Caller:
        if caller.role not in roles:
            raise HTTPException(403, f"the {caller.role} role may not do this")
        return caller

    return admitted


def _own_classrooms(caller: Caller) -> Select[str] | None:
    """The classrooms of an institution caller; None for any other (or one without its
    institution, which must never compile to ``IS NULL`` and see unscoped rows)."""
    if caller.role != Role.INSTITUTION or caller.institution_id is None:
        return None
    return select(Classroom.id).where(Classroom.institution_id == caller.institution_id)


def session_scope(caller: Caller) -> ColumnElement[bool]:
    """The sessions ``caller`` may read, as a WHERE clause on ``ClassSession``."""
    if caller.reads_everything:
        return true()
    rooms = _own_classrooms(caller)
    if rooms is not None:
        return ClassSession.classroom_id.in_(rooms)
    if caller.role == Role.LECTURER and caller.lecturer_id is not None:
        return ClassSession.lecturer_id == caller.lecturer_id
    return false()


def device_scope(caller: Caller) -> ColumnElement[bool]:
    """The devices ``caller`` may read, as a WHERE clause on ``Device``."""
    if caller.reads_everything:
        return true()
    rooms = _own_classrooms(caller)
    return false() if rooms is None else Device.classroom_id.in_(rooms)


def visible_session(db: Session, caller: Caller, session_id: str) -> ClassSession:
    """The session if ``caller`` may read it; 404 if there is none, 403 if it is not theirs."""
    row = db.scalar(
        select(ClassSession).where(ClassSession.id == session_id, session_scope(caller))
    )
    if row is not None:
        return row
    if db.get(ClassSession, session_id) is None:
        raise HTTPException(404, f"no session {session_id}")
    raise HTTPException(403, f"session {session_id} is not in the scope of this token")
