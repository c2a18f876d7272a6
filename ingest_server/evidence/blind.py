"""What a reader is shown of other sessions that a reason names.

Some reasons compare a session with every other session, whatever its school: a photo that
is the same picture as one received for another session (``photo_reused``), a clip whose
bytes were already given for another session's window (``clip_duplicate``), a lecturer in
two places at once (``lecturer_double_booked``). The verdict and the stored reasons (the
session row, the append-only feed) keep the other session's id, its photo and when it came,
as evidence for whoever reads everything. But a school must not learn another school's
session ids, photo ids or times from its own session's evidence, so when the other session
is outside the reader's scope the reason is shown blind: the same code and severity, those
params dropped, and a sentence that says "another institution's session"
(``rules.reasons.BLIND_TEMPLATES``).

Masking happens here only, at read time, where the reader is known: ``evidence.listing``
(summaries and their reasons), ``evidence.session`` (a session whole, its windows' proof
reasons and its verdict history) and through them the API, the dashboard and the export
take a ``Reader`` built from the caller's scope (``api.deps.session_scope``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, select, true
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import True_

from ingest_server.models import ClassSession
from ingest_server.rules.reasons import ReasonCode

# The params of a reason that name or describe another session, by the param holding its id.
_OTHER_SESSION_PARAMS: dict[ReasonCode, tuple[str, tuple[str, ...]]] = {
    ReasonCode.PHOTO_REUSED: (
        "other_session",
        ("other_session", "other_photo", "other_received_at"),
    ),
    ReasonCode.LECTURER_DOUBLE_BOOKED: ("other_session", ("other_session", "other_classroom")),
    ReasonCode.CLIP_DUPLICATE: ("other_window", ("other_window",)),
}


class Reader:
    """Which sessions the reader of some evidence may see: ``scope`` is the caller's WHERE
    clause on ``ClassSession`` (``api.deps.session_scope``), ``true()`` for a reader of
    everything. Answers are kept, so a page of summaries asks once per other session."""

    def __init__(self, db: Session, scope: ColumnElement[bool]) -> None:
        self._db = db
        self._scope = scope
        self.everything = isinstance(scope, True_)
        self._seen: dict[str, bool] = {}

    @classmethod
    def of_everything(cls, db: Session) -> Reader:
        """A reader who sees every session (admin, supervisor, the operator's command line)."""
        return cls(db, true())

    def sees(self, session_id: str) -> bool:
        """Whether the reader may see session ``session_id``."""
        if self.everything:
            return True
        if session_id not in self._seen:
            found = self._db.scalar(
                select(ClassSession.id).where(ClassSession.id == session_id, self._scope)
            )
            self._seen[session_id] = found is not None
        return self._seen[session_id]

    def _sees_window(self, other_window: str) -> bool:
        # ``facts.window_clips`` writes "<session id>#<window number>", or "command <cmd id>"
        # for a command that is no session's window: whose command that was is not known
        # here, so only a reader of everything is shown it.
        session_id, hash_sign, number = other_window.rpartition("#")
        if not hash_sign or not number.isdigit():
            return self.everything
        return self.sees(session_id)

    def params(self, code: str | None, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` of a reason with ``code`` as this reader may see them: without the
        params that name another session outside the reader's scope."""
        try:
            known = _OTHER_SESSION_PARAMS.get(ReasonCode(str(code)))
        except ValueError:
            known = None
        if known is None:
            return dict(params)
        key, hidden = known
        other = params.get(key)
        if not isinstance(other, str):
            return dict(params)
        visible = self._sees_window(other) if key == "other_window" else self.sees(other)
        if visible:
            return dict(params)
        return {name: value for name, value in params.items() if name not in hidden}
