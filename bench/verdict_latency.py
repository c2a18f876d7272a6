"""Verdict latency: from the last piece of a session's evidence to its verdict event.

``--sessions`` classes of 90 minutes, each with its camera's heartbeats, start and stop
events and the lecturer's opening and closing photos (through the API), are played on a virtual
clock through the server's own parts (``DeviceMessages``, the ``Scheduler`` that asks for the
windows, the ``VerdictKeeper``, SQLite), as ``tests/ingest_server/test_session_facts.py`` does.
Every window's clip is then stored with its check done except the last one, and the sessions
wait, pending, inside their clip grace. Then the scheduler runs as the server runs it, a tick
every ``scheduler_interval_s`` of real time, and one session at a time gets its last clip: the
figure is the real time from that clip's commit (its check done, ``sessions_changed``) to the
commit of the session's ``verdict_changed`` feed event saying ``verified``.

The baseline is one scheduler interval: the keeper recomputes on the scheduler's tick, off the
ingest thread, so the designed wait is up to one interval plus the recompute. The clip check
itself (decoding the window) comes before this and is measured in
``bench/heartbeat_ingest.py`` (phase 2).

Run: ``.venv/bin/python bench/verdict_latency.py [--sessions 10]`` (about half a minute).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from figures import Figure, report
from rich.console import Console
from sqlalchemy import select

from common.schemas import Event, EventType
from common.topics import UpKind, UpTopic
from ingest_server.db import make_engine, migrate
from ingest_server.models import FeedEvent, SessionWindow
from ingest_server.settings import Settings
from simulators.phone import make_photo

# The suite's row builders: a stored clip with its check, a heartbeat that says "alive".
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ingest_server"))
from ingest_helpers import quiet_heartbeat, rooms_school, verdict_rig
from rows import stored_clip

console = Console()
START = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


def verdicts(factory: Any, session_id: str) -> list[tuple[int, str]]:
    with factory() as db:
        rows = db.scalars(
            select(FeedEvent)
            .where(FeedEvent.kind == "verdict_changed", FeedEvent.session_id == session_id)
            .order_by(FeedEvent.seq)
        )
        return [(e.seq, json.loads(e.payload)["state"]) for e in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args()
    rooms = args.sessions
    with tempfile.TemporaryDirectory(prefix="classcam-verdict-") as tmp:
        work = Path(tmp)
        settings = Settings(data_dir=work, clip_grace_s=3600, photo_grace_s=3600)
        engine = make_engine(settings.database_url)
        migrate(engine)
        rig = verdict_rig(
            settings, engine, rooms_school(rooms, START), START - timedelta(minutes=5)
        )
        factory, clock, fleet, scheduler, api = (
            rig.factory,
            rig.clock,
            rig.fleet,
            rig.scheduler,
            rig.api,
        )
        beats = iter(range(1, 10**6))
        events = iter(range(10**6))

        def minutes(n: int) -> None:
            for _ in range(n):
                for i in range(rooms):
                    beat = quiet_heartbeat(f"cam-{i}", clock.now(), next(beats), recording=True)
                    fleet.handle(UpTopic(f"cam-{i}", UpKind.HEARTBEAT), beat.to_bytes())
                scheduler.tick()
                clock.advance(60)

        def say(kind: EventType, **data: Any) -> None:
            for i in range(rooms):
                said = Event(
                    event_id=f"ev-{next(events)}",
                    device_id=f"cam-{i}",
                    type=kind,
                    at=clock.now(),
                    session_id=f"s{i}",
                    clock_offset_s=0.0,
                    data=data,
                )
                fleet.handle(UpTopic(f"cam-{i}", UpKind.EVENT), said.to_bytes())

        def photos(kind: str) -> None:
            for i in range(rooms):
                jpeg = make_photo(
                    taken_at=clock.now(),
                    lat=31.2304 + i * 0.01,
                    lon=121.4737,
                    scene_seed=100 * i + (7 if kind == "opening" else 8),
                )
                answer = api.post(
                    f"/api/v1/sessions/s{i}/photos/{kind}",
                    files={"file": (f"{kind}.jpg", jpeg)},
                    headers={"Authorization": f"Bearer {f'tok-{i}' * 4}"},
                )
                if answer.status_code not in (200, 201):
                    raise RuntimeError(answer.text)

        console.print(f"{rooms} classes of 90 minutes on a virtual clock …")
        minutes(5)
        say(EventType.SESSION_STARTED)
        photos("opening")
        minutes(90)
        say(EventType.SESSION_STOPPED, recorded_s=90 * 60.0)
        photos("closing")
        minutes(2)  # the windows are asked for
        last: dict[str, SessionWindow] = {}
        with factory.begin() as db:
            for i in range(rooms):
                windows = db.scalars(
                    select(SessionWindow)
                    .where(SessionWindow.session_id == f"s{i}")
                    .order_by(SessionWindow.start)
                ).all()
                for n, window in enumerate(windows[:-1]):
                    stored_clip(
                        db,
                        f"cam-{i}",
                        f"u{i}-{n}",
                        window.start,
                        window.end,
                        clock.now(),
                        cmd_id=window.cmd_id,
                        sha256=f"{i:032x}{n:032x}",
                        decoded=True,
                    )
                last[f"s{i}"] = windows[-1]
                db.expunge(windows[-1])
        scheduler.sessions_changed({f"s{i}" for i in range(rooms)})
        minutes(1)
        before = {s: verdicts(factory, s) for s in last}
        if any(not v or v[-1][1] != "pending" for v in before.values()):
            raise RuntimeError(f"expected every session pending before its last clip: {before}")

        # The server's scheduler loop: a tick every interval of real time.
        stop = threading.Event()

        def ticking() -> None:
            while not stop.wait(settings.scheduler_interval_s):
                scheduler.tick()

        ticker = threading.Thread(target=ticking, daemon=True)
        ticker.start()
        latencies = []
        try:
            for n, (session_id, window) in enumerate(last.items()):
                time.sleep(0.1 + (n * 0.29) % 0.9)  # arrivals fall anywhere between two ticks
                with factory.begin() as db:
                    stored_clip(
                        db,
                        f"cam-{session_id[1:]}",
                        f"last-{session_id}",
                        window.start,
                        window.end,
                        clock.now(),
                        cmd_id=window.cmd_id,
                        sha256=f"{'f' * 32}{n:032x}",
                        decoded=True,
                    )
                committed = time.perf_counter()
                scheduler.sessions_changed({session_id})  # what the clip checker calls
                seen = verdicts(factory, session_id)[-1][0]
                while (now := verdicts(factory, session_id)[-1])[0] == seen:
                    if time.perf_counter() - committed > 30:
                        raise RuntimeError(f"{session_id}: no verdict event in 30 s")
                    time.sleep(0.005)
                if now[1] != "verified":
                    raise RuntimeError(f"{session_id}: the last clip made it {now[1]}")
                latencies.append(time.perf_counter() - committed)
        finally:
            stop.set()
            ticker.join(5)
            engine.dispose()
    latencies.sort()
    console.print(
        f"last clip → verified: median {1e3 * statistics.median(latencies):.0f} ms, "
        f"max {1e3 * latencies[-1]:.0f} ms over {len(latencies)} sessions"
    )
    report(
        "verdict latency: issue 11 goal",
        [
            Figure(
                "verdict_latency",
                f"verdict latency, last clip → event (max of {rooms})",
                latencies[-1],
                "s",
                settings.scheduler_interval_s,
                "one scheduler tick",
                "<=",
                2.0,
                "measured",
                f".venv/bin/python bench/verdict_latency.py --sessions {rooms}",
            )
        ],
        console,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
