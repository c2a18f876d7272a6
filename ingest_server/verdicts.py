"""Keeping every session's verdict current.

``judge`` (``ingest_server.rules.verdict``) is a pure function; this module reads the facts
(``ingest_server.facts``), calls it, stores the result, and appends a feed event whenever the
verdict or its reasons change.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from sqlalchemy.orm import Session

from common.clock import Clock, SystemClock
from ingest_server import audit
from ingest_server.db import SessionFactory
from ingest_server.facts import FactReader
from ingest_server.models import ClassSession
from ingest_server.rules.reasons import Reason, ReasonCode
from ingest_server.rules.verdict import SessionVerdict, VerdictPolicy, VerdictState, judge
from ingest_server.sessions import append_feed
from ingest_server.settings import Settings

log = logging.getLogger(__name__)


class VerdictKeeper:
    """Recomputes verdicts on every new fact (called from the scheduler and the API)."""

    def __init__(
        self, session_factory: SessionFactory, settings: Settings, clock: Clock | None = None
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.clock = clock or SystemClock()
        self.facts = FactReader(settings)
        self.policy = VerdictPolicy(
            clip_grace_s=settings.clip_grace_s,
            photo_grace_s=settings.photo_grace_s,
            offline_limit_s=settings.offline_tolerance_s,
        )

    def recompute(self, session_ids: set[str]) -> None:
        for session_id in sorted(session_ids):
            try:
                with self.session_factory.begin() as db:
                    self._recompute(db, session_id)
            except Exception:  # one session's trouble must not hold up the others
                log.exception("verdict of session %s failed", session_id)

    def _recompute(self, db: Session, session_id: str) -> None:
        # Locked before the facts are read: two recomputes of one session (scheduler, API)
        # take turns, so the later one reads everything the earlier one wrote or saw. NO KEY
        # UPDATE (on PostgreSQL) still lets new photos reference the session meanwhile.
        row = db.get(ClassSession, session_id, with_for_update={"key_share": True})
        if row is None:
            return
        now = self.clock.now()
        scheduled_end = row.scheduled_start + timedelta(seconds=row.duration_s)
        if now < scheduled_end:
            # Not before the scheduled end, even if the class closed early: window reasons
            # would name windows while class time remains, and tell the room what is unchecked.
            verdict = SessionVerdict(
                VerdictState.PENDING,
                [Reason(ReasonCode.SESSION_IN_PROGRESS, {"end_at": scheduled_end.isoformat()})],
            )
        else:
            verdict = judge(self.facts.evidence(db, row), now, self.policy)
        reasons = json.dumps(
            [r.to_dict() for r in verdict.reasons], ensure_ascii=False, sort_keys=True, default=str
        )
        if row.verdict == verdict.state.value and row.verdict_reasons == reasons:
            return
        audit.record(
            db,
            audit.AuditAction.VERDICT_CHANGED,
            "session",
            session_id,
            "system:verdict-keeper",
            {
                "from": row.verdict,
                "to": verdict.state.value,
                "reasons": [r.code.value for r in verdict.reasons],
            },
        )
        row.verdict, row.verdict_reasons = verdict.state.value, reasons
        row.verdict_at = self.clock.now()
        append_feed(db, "verdict_changed", session_id, verdict.to_dict())
        log.info(
            "session %s: %s %s",
            session_id,
            verdict.state.value,
            [r.code.value for r in verdict.reasons],
        )
