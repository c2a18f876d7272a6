"""Sessions as a list shows them: the filter, keyset pages within the caller's scope (an
opaque cursor), and each session's summary with its reasons in the reader's language, other
sessions outside the reader's scope left out of them (``evidence.blind``)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from common.clock import to_utc
from common.topics import ID_PATTERN
from ingest_server.evidence.blind import Reader
from ingest_server.models import Classroom, ClassSession, Institution, Lecturer, TrainingClass
from ingest_server.rules.reasons import DEFAULT_TIMEZONE, Reason, ReasonCode, render

VERDICTS = ("verified", "pending", "rejected")


def iso_or_none(value: datetime | None) -> str | None:
    """``value`` as an ISO-8601 UTC string (None stays None)."""
    return to_utc(value).isoformat() if value is not None else None


@dataclass(frozen=True)
class SessionFilter:
    """What a list of sessions is narrowed to; every field optional. ``start`` and ``end``
    bound the scheduled start (``start`` included, ``end`` not), in UTC."""

    start: datetime | None = None
    end: datetime | None = None
    institution_id: str | None = None
    classroom_id: str | None = None
    lecturer_id: str | None = None
    verdict: str | None = None

    def where(self) -> list[ColumnElement[bool]]:
        """The filter as WHERE clauses on ``ClassSession``."""
        clauses: list[ColumnElement[bool]] = []
        if self.start is not None:
            clauses.append(ClassSession.scheduled_start >= to_utc(self.start))
        if self.end is not None:
            clauses.append(ClassSession.scheduled_start < to_utc(self.end))
        if self.institution_id is not None:
            rooms = select(Classroom.id).where(Classroom.institution_id == self.institution_id)
            clauses.append(ClassSession.classroom_id.in_(rooms))
        if self.classroom_id is not None:
            clauses.append(ClassSession.classroom_id == self.classroom_id)
        if self.lecturer_id is not None:
            clauses.append(ClassSession.lecturer_id == self.lecturer_id)
        if self.verdict is not None:
            clauses.append(ClassSession.verdict == self.verdict)
        return clauses

    def to_query(self) -> dict[str, str | None]:
        """The filter as the audit log and links spell it."""
        return {
            "start": iso_or_none(self.start),
            "end": iso_or_none(self.end),
            "institution": self.institution_id,
            "classroom": self.classroom_id,
            "lecturer": self.lecturer_id,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class SessionPage:
    """One page of sessions, newest scheduled start first (ties: greater id first), and the
    cursor of the next page (None on the last)."""

    sessions: list[ClassSession]
    next: str | None


class BadCursor(ValueError):
    """A cursor this module did not make (the API answers 422)."""


def encode_cursor(row: ClassSession) -> str:
    """The opaque cursor after ``row``: its scheduled start and id (keyset paging, so a page
    neither repeats nor skips a row when sessions are added meanwhile)."""
    raw = json.dumps([to_utc(row.scheduled_start).isoformat(), row.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (scheduled start, id) a cursor stands after; ``BadCursor`` if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        start_text, session_id = json.loads(raw)
        start = to_utc(datetime.fromisoformat(start_text))
    except (binascii.Error, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise BadCursor("not a cursor of this list") from exc
    # Only an id a session can have: anything else (a NUL, which PostgreSQL refuses with an
    # error) never came from ``encode_cursor``.
    if not (isinstance(session_id, str) and ID_PATTERN.fullmatch(session_id)):
        raise BadCursor("not a cursor of this list")
    if start.tzinfo is None:
        raise BadCursor("not a cursor of this list")
    return start, session_id


def session_page(
    db: Session,
    scope: ColumnElement[bool],
    flt: SessionFilter,
    *,
    after: str | None,
    limit: int,
) -> SessionPage:
    """Up to ``limit`` sessions within ``scope`` (the caller's WHERE clause,
    ``api.deps.session_scope``) matching ``flt``, after cursor ``after``. The scope is part of
    the query, so a filter naming another institution's rows finds nothing."""
    query = select(ClassSession).where(scope, *flt.where())
    if after is not None:
        start, session_id = decode_cursor(after)
        query = query.where(
            or_(
                ClassSession.scheduled_start < start,
                and_(ClassSession.scheduled_start == start, ClassSession.id < session_id),
            )
        )
    query = query.order_by(ClassSession.scheduled_start.desc(), ClassSession.id.desc())
    rows = list(db.scalars(query.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return SessionPage(rows, encode_cursor(rows[-1]) if more and rows else None)


# -- Summaries ----------------------------------------------------------------------------------


def reasons_view(
    raw: str | list[Any], lang: str, tz: tzinfo, reader: Reader
) -> list[dict[str, Any]]:
    """Stored reasons (JSON text or a list of {code, params}) with their sentences in
    ``lang``, as ``reader`` may see them (another session outside its scope shown blind,
    ``evidence.blind``); a code this version does not know is shown by its code rather than
    dropped."""
    items = json.loads(raw or "[]") if isinstance(raw, str) else raw
    out = []
    for item in items:
        code = item.get("code")
        params = reader.params(code, item.get("params") or {})
        try:
            reason = Reason(code=ReasonCode(code), params=params)
            text, severity = render(reason, lang, tz=tz), str(reason.severity)
        except (ValueError, KeyError):
            text, severity = str(code), item.get("severity")
        out.append({"code": code, "severity": severity, "params": params, "text": text})
    return out


def session_summary(
    db: Session, row: ClassSession, *, reader: Reader, lang: str, tz: tzinfo = DEFAULT_TIMEZONE
) -> dict[str, Any]:
    """A session as a list shows it to ``reader``: who, where, when, its state and verdict
    with reasons."""
    course = db.get(TrainingClass, row.class_id)
    room = db.get(Classroom, row.classroom_id)
    institution = db.get(Institution, room.institution_id) if room else None
    lecturer = db.get(Lecturer, row.lecturer_id)
    end = row.scheduled_start + timedelta(seconds=row.duration_s)
    return {
        "id": row.id,
        "class": {"id": row.class_id, "name": course.name if course else None},
        "classroom": {"id": row.classroom_id, "name": room.name if room else None},
        "institution": {
            "id": institution.id if institution else None,
            "name": institution.name if institution else None,
        },
        "lecturer": {"id": row.lecturer_id, "name": lecturer.name if lecturer else None},
        "scheduled_start": iso_or_none(row.scheduled_start),
        "scheduled_end": iso_or_none(end),
        "duration_s": row.duration_s,
        "state": row.state,
        "verdict": {
            "state": row.verdict,
            "at": iso_or_none(row.verdict_at),
            "reasons": reasons_view(row.verdict_reasons, lang, tz, reader),
        },
        "language": lang,
    }
