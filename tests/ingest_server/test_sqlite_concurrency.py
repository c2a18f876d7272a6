"""The server's SQLite never fails a read-then-write transaction with "database is locked"
(issue 8, finding 1): write transactions take the lock up front (``BEGIN IMMEDIATE``) and wait
their turn; the same work in deferred transactions shows the failure this guards against."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from ingest_server.db import SessionFactory, make_engine, make_session_factory, reader_factory
from ingest_server.models import FeedEvent

pytestmark = pytest.mark.sqlite_only(reason="SQLite's write lock (BEGIN IMMEDIATE)")

ROUNDS = 25


def _read_then_write(factory: SessionFactory, name: str, errors: list[str]) -> None:
    for n in range(ROUNDS):
        try:
            with factory.begin() as db:
                seen = db.scalar(select(func.count()).select_from(FeedEvent))
                time.sleep(0.005)  # the other thread commits meanwhile
                db.add(
                    FeedEvent(
                        at=datetime.now(UTC),
                        kind="test",
                        session_id=None,
                        payload=f'{{"by": "{name}", "n": {n}, "seen": {seen}}}',
                    )
                )
        except OperationalError as exc:
            errors.append(str(exc.orig))


def _race(factory: SessionFactory) -> list[str]:
    errors: list[str] = []
    threads = [
        threading.Thread(target=_read_then_write, args=(factory, f"t{i}", errors)) for i in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_concurrent_read_then_write_transactions_never_fail_as_locked(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        factory = make_session_factory(engine)
        assert _race(factory) == []
        with factory() as db:
            assert db.scalar(select(func.count()).select_from(FeedEvent)) == 2 * ROUNDS
    finally:
        engine.dispose()


def test_the_same_race_in_deferred_transactions_does_fail(sqlite_url: str) -> None:
    """The control: without the lock taken up front, SQLite cannot upgrade a read snapshot
    that another connection has moved past, and busy_timeout does not help."""
    engine = make_engine(sqlite_url)
    try:
        errors = _race(reader_factory(make_session_factory(engine)))
    finally:
        engine.dispose()
    assert errors and all("locked" in e for e in errors)
