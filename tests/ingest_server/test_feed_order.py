"""The feed never skips (issue 8, finding 6): writers whose transactions commit in another order
than they began, and a reader paging with its cursor and restarted at random points, on the real
PostgreSQL and on SQLite. The reader ends with every event exactly once, in cursor order."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Engine, select

from ingest_server.db import make_engine, make_session_factory, reader_factory
from ingest_server.feed import read_page
from ingest_server.models import FeedEvent
from ingest_server.sessions import append_feed

WRITERS = 4
PER_WRITER = 25


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    from ingest_server.db import migrate

    migrate(pg_url)
    engine = make_engine(pg_url, pool_size=WRITERS + 4)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    try:
        yield engine
    finally:
        engine.dispose()


@dataclass
class Reader:
    """A supervision backend: it keeps (cursor, events) durably; a restart loses the page it was
    holding but not what it had saved."""

    factory: object
    rng: random.Random
    saved_cursor: int = 0
    saved: list[tuple[int, str]] = field(default_factory=list)
    restarts: int = 0
    pages: int = 0

    def poll(self) -> int:
        """Read one page (small, so the reader runs among the writers); maybe crash before
        saving it. Returns how many events the page held."""
        with reader_factory(self.factory)() as db:  # type: ignore[arg-type]
            page = read_page(db, after=self.saved_cursor, limit=self.rng.randint(1, 7))
        self.pages += 1
        if self.rng.random() < 0.2:
            self.restarts += 1  # killed before it saved the page: it reads it again
            return len(page.events)
        self.saved.extend((e.seq, e.payload) for e in page.events)
        self.saved_cursor = page.next
        return len(page.events)


def _run(engine: Engine, seed: int, *, hold_for_reader: bool) -> None:
    factory = make_session_factory(engine)
    rng = random.Random(seed)
    reader = Reader(factory, random.Random(seed + 1))
    holder_flushed = threading.Event()
    later_seen = threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        # Begins first, flushes its event, and commits only after the reader has read events
        # that committed after it began.
        try:
            with factory.begin() as db:
                append_feed(db, "test", None, {"w": "holder"})
                db.flush()
                holder_flushed.set()
                if hold_for_reader:
                    assert later_seen.wait(30)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def writer(n: int, delays: list[float]) -> None:
        try:
            assert holder_flushed.wait(30)
            for i, delay in enumerate(delays):
                with factory.begin() as db:
                    append_feed(db, "test", None, {"w": n, "i": i})
                    db.flush()
                    # Others begin and commit while this one is open: commit order differs
                    # from the order the events were appended in.
                    threading.Event().wait(delay)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=holder)] + [
        threading.Thread(target=writer, args=(n, [rng.uniform(0, 0.01) for _ in range(PER_WRITER)]))
        for n in range(WRITERS)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        reader.poll()
        if len(reader.saved) >= 10:
            later_seen.set()
    later_seen.set()
    for t in threads:
        t.join()
    assert not errors, errors
    while reader.poll() or reader.saved_cursor == 0:
        pass

    with factory() as db:
        committed = [
            (r.seq, r.payload) for r in db.scalars(select(FeedEvent).order_by(FeedEvent.seq))
        ]
    assert len(committed) == WRITERS * PER_WRITER + 1
    seqs = [seq for seq, _ in reader.saved]
    assert seqs == sorted(set(seqs)), "the reader saw an event twice or out of order"
    missing = sorted(set(committed) - set(reader.saved))
    assert not missing, f"the reader never saw {len(missing)} events, e.g. {missing[:3]}"
    assert reader.saved == committed
    assert reader.restarts > 0 and reader.pages > reader.restarts


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reader_gets_every_event_once_in_order_on_postgresql(pg_engine: Engine, seed: int) -> None:
    _run(pg_engine, seed, hold_for_reader=True)


def test_reader_gets_every_event_once_in_order_on_sqlite(sqlite_engine: Engine) -> None:
    # One writer at a time on SQLite: the holder cannot wait for later commits.
    _run(sqlite_engine, 7, hold_for_reader=False)


def test_an_append_rolled_back_is_not_written_by_a_later_commit(sqlite_engine: Engine) -> None:
    """Appends wait in the session until commit: a rollback must drop them, not hand them to
    the session's next transaction."""
    factory = make_session_factory(sqlite_engine)
    with factory() as db:
        db.begin()
        append_feed(db, "test", None, {"n": "rolled back"})
        db.rollback()
        db.begin()
        append_feed(db, "test", None, {"n": "kept"})
        db.commit()
        payloads = db.scalars(select(FeedEvent.payload)).all()
    assert payloads == ['{"n": "kept"}']
