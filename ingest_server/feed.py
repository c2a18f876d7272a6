"""The append-only event feed the supervision backend reads with a cursor, and the commit-time
appends it shares with the audit log.

A reader keeps the ``seq`` of the last event it read and asks for what comes after. That never
skips only if no event can become visible *below* a cursor someone already holds. On PostgreSQL
a sequence hands out ``seq`` when a row is inserted, not when its transaction commits: a
transaction that took seq 5 and committed after seq 6 had been read was skipped for good.

So rows of the ordered logs are not inserted when the code appends them. They wait in the
session and are written by one ``before_commit`` hook, under a transaction-scoped advisory lock
(``pg_advisory_xact_lock``) taken after the rest of the transaction has been flushed. The lock is
released only once the commit is visible, so the next appender draws its ``seq`` after this one
is readable: seq order is commit order. The lock is held for the insert and the commit alone
(not while the caller does its other work), and a transaction holding it waits for no row lock,
so it cannot deadlock with the callers' own locks. SQLite needs no lock: every write transaction
begins ``IMMEDIATE`` and holds the database's one write lock already.

Readers that long-poll (``GET /api/v1/feed?wait=``) wait on ``commits``: once a transaction
that appended to the feed has committed, the ``after_commit`` hook calls every listener, so a
waiter in this process wakes within milliseconds. A commit in another process (a second ingest
worker, a CLI) signals nobody here; waiters read the database again every
``Settings.feed_recheck_s`` for those.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.orm import Session, SessionTransaction

from common.clock import Clock, SystemClock
from ingest_server.models import FeedEvent

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key of the ordered logs (feed and audit): "classcam" in ASCII.
APPEND_LOCK_KEY = 0x636C61737363616D
_PENDING = "classcam_commit_appends"
# Set on a session whose transaction wrote feed rows, until it commits or rolls back.
_APPENDED = "classcam_feed_appended"
# Where a session keeps its factory's clock (``db.make_session_factory``).
CLOCK_INFO = "classcam_clock"
_SYSTEM_CLOCK = SystemClock()


def session_clock(db: Session) -> Clock:
    """The clock ``db``'s factory was given (the server's: simulated in a replay), else the
    system clock. Rows stamped deep inside a transaction (feed, audit, session changes) take
    their time from here, so one server runs on one clock."""
    clock = db.info.get(CLOCK_INFO)
    return clock if clock is not None else _SYSTEM_CLOCK


# Writers of the ordered logs, by name, run at commit in registration order under the lock.
CommitWriter = Callable[[Session, list[Any]], None]
_writers: dict[str, CommitWriter] = {}


def register_commit_writer(log_name: str, writer: CommitWriter) -> None:
    """Have ``writer(db, items)`` write the items deferred for ``log_name`` at each commit."""
    _writers[log_name] = writer


def defer_to_commit(db: Session, log_name: str, item: object) -> None:
    """Queue ``item`` for ``log_name``'s writer at this transaction's commit (dropped if it
    rolls back)."""
    if log_name not in _writers:
        raise KeyError(f"no commit writer for {log_name}")
    pending: dict[str, list[Any]] = db.info.setdefault(_PENDING, {})
    pending.setdefault(log_name, []).append(item)


@contextmanager
def savepoint(db: Session) -> Iterator[None]:
    """``db.begin_nested()`` whose rollback also drops what was deferred to commit inside it
    (the deferred items are the session's, not the SAVEPOINT's, and would be written)."""
    db.flush()  # what came before defers its own rows now, outside the savepoint
    pending: dict[str, list[Any]] = db.info.setdefault(_PENDING, {})
    marks = {log_name: len(items) for log_name, items in pending.items()}
    try:
        with db.begin_nested():
            yield
    except BaseException:
        for log_name, items in pending.items():
            del items[marks.get(log_name, 0) :]
        raise


def lock_appends(db: Session) -> None:
    """Serialise appends to the ordered logs until this transaction ends (PostgreSQL; SQLite's
    write transactions are serial already)."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY})


@event.listens_for(Session, "before_commit")
def _write_deferred(db: Session) -> None:
    # The caller's own work first, so the lock is held for the appends alone; its flush may
    # defer rows of its own (audit.audit_arrivals).
    db.flush()
    pending: dict[str, list[Any]] | None = db.info.pop(_PENDING, None)
    if not pending:
        return
    lock_appends(db)
    for log_name, writer in _writers.items():
        items = pending.get(log_name)
        if items:
            writer(db, items)
    if pending.get("feed"):
        db.info[_APPENDED] = True
    db.flush()


@event.listens_for(Session, "after_commit")
def _announce_appends(db: Session) -> None:
    # Also called when a SAVEPOINT is released: its rows are visible only at the outer commit.
    if db.in_nested_transaction() or not db.info.pop(_APPENDED, False):
        return
    commits.announce()


@event.listens_for(Session, "after_transaction_end")
def _drop_deferred(db: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the whole transaction, committed or rolled back
        db.info.pop(_PENDING, None)
        db.info.pop(_APPENDED, None)


class FeedCommits:
    """Who wants to know that the feed grew: listeners called, in the committing thread, after
    each commit that appended to it in this process. A listener must be quick and must not
    touch the database (a long-poll's listener hands a wake-up to its event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: set[Callable[[], None]] = set()

    @contextmanager
    def listening(self, listener: Callable[[], None], limit: int) -> Iterator[bool]:
        """Call ``listener`` after each feed commit while in the block; yields False (and
        adds nothing) when ``limit`` listeners are in already."""
        with self._lock:
            admitted = len(self._listeners) < limit
            if admitted:
                self._listeners.add(listener)
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    self._listeners.discard(listener)

    @property
    def listeners(self) -> int:
        """How many listen now."""
        with self._lock:
            return len(self._listeners)

    def announce(self) -> None:
        """Call every listener; one that fails is logged, never raised into the commit that
        is already durable."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:
                log.exception("a feed listener failed")


# One per process: the commit hooks above are the process's, for every session factory.
commits = FeedCommits()


def _write_feed(db: Session, events: list[FeedEvent]) -> None:
    db.add_all(events)


register_commit_writer("feed", _write_feed)


def append(db: Session, kind: str, session_id: str | None, payload: dict[str, object]) -> None:
    """Append one event to the feed in ``db``'s transaction; it gets its ``seq`` at commit."""
    defer_to_commit(
        db,
        "feed",
        FeedEvent(
            at=session_clock(db).now(),
            kind=kind,
            session_id=session_id,
            payload=json.dumps(payload, ensure_ascii=False, default=str),
        ),
    )


@dataclass(frozen=True)
class FeedPage:
    """Events after a cursor, oldest first, and the cursor to pass back for the next page."""

    events: list[FeedEvent]
    next: int

    def to_dict(self) -> dict[str, Any]:
        """The API's JSON form."""
        return {
            "events": [
                {
                    "seq": r.seq,
                    "at": r.at.isoformat(),
                    "kind": r.kind,
                    "session_id": r.session_id,
                    "payload": json.loads(r.payload),
                }
                for r in self.events
            ],
            "next": self.next,
        }


def read_page(db: Session, after: int, limit: int) -> FeedPage:
    """Up to ``limit`` events with ``seq`` above ``after``. Because seq order is commit order,
    no event can later appear below the returned cursor."""
    rows = list(
        db.scalars(
            select(FeedEvent).where(FeedEvent.seq > after).order_by(FeedEvent.seq).limit(limit)
        )
    )
    return FeedPage(rows, rows[-1].seq if rows else after)
