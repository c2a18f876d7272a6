"""Refused messages, bounded: exact counters per (device, reason) plus a sample of rows.

A device that sends ten thousand bad messages must cost ten thousand increments, not ten
thousand rows. ``RejectionLog`` gathers refusals between group commits and writes them inside
the processor's own transaction: the counters are upserted (exact, whatever the volume), and
only the newest ``per_reason`` rows of each reason (and ``max_rows`` in all) stay in
``rejections`` to show what the refusals looked like.
"""

from __future__ import annotations

from collections import Counter, deque
from datetime import datetime

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ingest_server.models import Rejection, RejectionCount

UNKNOWN_DEVICE = ""  # the counters' key for a refusal with no device to blame


class RejectionLog:
    """Refusals waiting for the next commit, bounded in memory as in the database."""

    def __init__(self, per_reason: int, max_rows: int) -> None:
        self.per_reason = per_reason
        self.max_rows = max_rows
        self._counts: Counter[tuple[str, str]] = Counter()
        self._first: dict[tuple[str, str], datetime] = {}
        self._last: dict[tuple[str, str], datetime] = {}
        self._samples: dict[str, deque[Rejection]] = {}

    def __bool__(self) -> bool:
        return bool(self._counts)

    def add(
        self,
        at: datetime,
        device_id: str | None,
        upload_id: str | None,
        reason: str,
        detail: str,
    ) -> None:
        """Count one refusal and keep it as a sample (the oldest unsaved ones drop first)."""
        key = (device_id or UNKNOWN_DEVICE, reason)
        self._counts[key] += 1
        self._first.setdefault(key, at)
        self._last[key] = at
        sample = self._samples.setdefault(reason, deque(maxlen=self.per_reason))
        sample.append(
            Rejection(at=at, device_id=device_id, upload_id=upload_id, reason=reason, detail=detail)
        )

    def write(self, session: Session) -> None:
        """Add the counters and samples to ``session``'s transaction and prune old samples
        (call inside the transaction that commits them; ``clear`` once it has)."""
        if not self._counts:
            return
        # In one order on every worker: two flushes upserting the same counts wait for each
        # other instead of deadlocking.
        for (device_id, reason), count in sorted(self._counts.items()):
            _upsert_count(
                session,
                device_id,
                reason,
                count,
                self._first[(device_id, reason)],
                self._last[(device_id, reason)],
            )
        for sample in self._samples.values():
            session.add_all(sample)
        session.flush()
        for reason in self._samples:
            _keep_newest(session, self.per_reason, Rejection.reason == reason)
        _keep_newest(session, self.max_rows, None)

    def clear(self) -> None:
        """Forget what was written (after its transaction committed)."""
        self._counts.clear()
        self._first.clear()
        self._last.clear()
        self._samples.clear()


def _upsert_count(
    session: Session, device_id: str, reason: str, count: int, first: datetime, last: datetime
) -> None:
    """Add ``count`` to the (device, reason) counter, creating it if need be, atomically
    (several ingest workers may count the same device at once)."""
    values = {
        "device_id": device_id,
        "reason": reason,
        "count": count,
        "first_at": first,
        "last_at": last,
    }
    dialect = session.get_bind().dialect.name
    # Both dialects spell ON CONFLICT DO UPDATE the same way; only their insert() differs.
    stmt: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(RejectionCount).values(**values)
    elif dialect == "sqlite":
        stmt = sqlite.insert(RejectionCount).values(**values)
    else:  # pragma: no cover - the two backends we run on are above
        raise NotImplementedError(f"no upsert for {dialect}")
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["device_id", "reason"],
            set_={
                "count": RejectionCount.count + stmt.excluded.count,
                "last_at": stmt.excluded.last_at,
            },
        )
    )


def _keep_newest(session: Session, keep: int, where: ColumnElement[bool] | None) -> None:
    """Delete the rows of ``rejections`` (matching ``where``) older than the newest ``keep``."""
    newest = select(Rejection.id).order_by(Rejection.id.desc()).offset(keep).limit(1)
    if where is not None:
        newest = newest.where(where)
    cutoff = session.scalar(newest)
    if cutoff is None:
        return
    doomed = delete(Rejection).where(Rejection.id <= cutoff)
    if where is not None:
        doomed = doomed.where(where)
    session.execute(doomed)
