"""Route dependencies (DESIGN.md §3, as the FastAPI template's ``api/deps.py``): the running
server's context, a database session, the lecturer behind a token. Routers import this module;
the app imports the routers; nothing imports back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.clock import Clock, SystemClock
from common.commands import Command
from ingest_server.db import SessionFactory, reader_factory
from ingest_server.models import Lecturer
from ingest_server.settings import Settings
from ingest_server.setup_import import token_sha256
from ingest_server.store import EvidenceStore


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


def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


def get_db(context: Annotated[ApiContext, Depends(get_context)]) -> Iterator[Session]:
    """A session for reading: it holds no write lock however long the request takes."""
    with reader_factory(context.session_factory)() as db:
        yield db


def get_lecturer(
    db: Annotated[Session, Depends(get_db)], authorization: Annotated[str | None, Header()] = None
) -> Lecturer:
    """The lecturer whose app token is in ``Authorization: Bearer …``."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            401,
            "missing lecturer token (Authorization: Bearer …)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    lecturer = db.scalar(select(Lecturer).where(Lecturer.token_sha256 == token_sha256(token)))
    if lecturer is None:
        raise HTTPException(401, "unknown lecturer token", headers={"WWW-Authenticate": "Bearer"})
    return lecturer
