"""What commit-ordered feed appends cost on PostgreSQL, against unserialised appends, in one run.

Several threads each run transactions that do some other work (``--work-ms``, standing in for
the verdict keeper's reads) and append one feed event. Three ways to append:

* ``unserialised`` — the old ``db.add(FeedEvent(...))``: fastest, and skips rows for readers;
* ``at-commit`` — ``ingest_server.feed.append``: the row is written at commit under the advisory
  lock, so only the insert and the commit are serial;
* ``+audit row`` — ``at-commit`` plus one hash-chained audit row (``ingest_server.audit``);
* ``at-append`` — the naive fix: take the lock when appending, hold it through the other work.

Prints appends per second for each and the ratio to unserialised.
Run: ``.venv/bin/python bench/feed_append.py [--url postgresql+psycopg://postgres@127.0.0.1/test]``.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.orm import Session

from common.clock import utc_now
from ingest_server import audit, feed
from ingest_server.db import make_engine, make_session_factory, migrate
from ingest_server.models import FeedEvent

Append = Callable[[Session, int], None]


def unserialised(db: Session, n: int) -> None:
    db.add(FeedEvent(at=utc_now(), kind="bench", session_id=None, payload=f'{{"n": {n}}}'))


def at_commit(db: Session, n: int) -> None:
    feed.append(db, "bench", None, {"n": n})


def with_audit(db: Session, n: int) -> None:
    feed.append(db, "bench", None, {"n": n})
    audit.record(db, "viewed", "session", f"s{n}", "bench")


def at_append(db: Session, n: int) -> None:
    feed.lock_appends(db)
    unserialised(db, n)


def run(
    factory: Callable[[], Session], append: Append, threads: int, per: int, work_s: float
) -> float:
    """Appends per second over ``threads`` × ``per`` transactions."""
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        for n in range(per):
            with factory() as db, db.begin():
                db.execute(text("SELECT 1"))
                append(db, n)
                time.sleep(work_s)  # the rest of the transaction's work

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return threads * per / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--per-thread", type=int, default=200)
    parser.add_argument("--work-ms", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(args.url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(f"{args.url}?options=-csearch_path%3D{schema}", pool_size=args.threads)
    try:
        migrate(engine)
        factory = make_session_factory(engine)
        modes: dict[str, Append] = {
            "unserialised": unserialised,
            "at-commit": at_commit,
            "+audit row": with_audit,
            "at-append": at_append,
        }
        best: dict[str, float] = dict.fromkeys(modes, 0.0)
        for _ in range(args.rounds):  # interleaved rounds, best of each: less drift
            for name, append in modes.items():
                rate = run(factory, append, args.threads, args.per_thread, args.work_ms / 1000)
                best[name] = max(best[name], rate)
        print(
            f"{args.threads} threads x {args.per_thread} transactions, "
            f"{args.work_ms} ms other work each, best of {args.rounds}:"
        )
        for name, rate in best.items():
            print(f"  {name:13s} {rate:8.0f} appends/s  ratio {rate / best['unserialised']:.2f}")
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
