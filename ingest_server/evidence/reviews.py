"""The per-user "reviewed" mark of the review queue (table ``session_reviews``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from common.clock import to_utc
from ingest_server.audit import api_actor
from ingest_server.auth import Caller
from ingest_server.models import SessionReview

# Room in the 200-character ``reviewer`` column for the role and ``#token<id>`` (up to 19
# digits) after a token's name, however long the name: cut, the id would be lost.
_NAME_ROOM = 150


def reviewer_of(caller: Caller) -> str:
    """Whose "reviewed" mark a caller sets and sees: one token's, named as the audit log names
    its caller (``role:name#token<id>``). Token names are neither unique nor required, so the
    name alone would let two people share marks; a person given a new token starts afresh."""
    return api_actor(caller.role, caller.name[:_NAME_ROOM], caller.token_id)


def mark_reviewed(db: Session, session_id: str, reviewer: str, now: datetime) -> None:
    """Mark ``session_id`` reviewed by ``reviewer`` (``reviewer_of``); marking twice keeps the
    first time. Insert-or-nothing in one statement, so two requests at once cannot collide."""
    values = {"session_id": session_id, "reviewer": reviewer[:200], "reviewed_at": to_utc(now)}
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        db.execute(pg_insert(SessionReview).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        db.execute(sqlite_insert(SessionReview).values(values).on_conflict_do_nothing())
    elif (
        db.scalar(
            select(SessionReview.id).where(
                SessionReview.session_id == session_id, SessionReview.reviewer == reviewer[:200]
            )
        )
        is None
    ):
        db.add(SessionReview(**values))


def unmark_reviewed(db: Session, session_id: str, reviewer: str) -> None:
    """Take ``reviewer``'s mark off ``session_id`` (nothing if there is none)."""
    db.execute(
        delete(SessionReview).where(
            SessionReview.session_id == session_id, SessionReview.reviewer == reviewer[:200]
        )
    )


def reviewed_by(db: Session, reviewer: str, session_ids: Iterable[str]) -> set[str]:
    """Which of ``session_ids`` ``reviewer`` has marked reviewed."""
    ids = list(session_ids)
    if not ids:
        return set()
    return set(
        db.scalars(
            select(SessionReview.session_id).where(
                SessionReview.reviewer == reviewer[:200], SessionReview.session_id.in_(ids)
            )
        )
    )
