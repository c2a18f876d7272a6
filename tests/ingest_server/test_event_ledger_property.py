"""The event ledger as a property (issue 8, item 9): a device's events delivered in any order,
each any number of times, leave the same stored events (one per ``event_id``) and the same
session facts as the same events delivered once each, in the order the device made them.

Order-dependence that is legitimate, and so left out of the comparison:
- the feed's order and the times its entries state (it says what the server knew when it
  wrote them: an earlier start learnt later moves the session's ``opened_at``, not the entry
  already appended); which entries it holds is compared;
- ``SessionWindow.failed_at`` is the server's wall clock when a cut failure was learnt;
- events of one device at the same instant (a device's clock orders its own events; ties are
  not generated);
- two different answers to one cut command (a device runs a ``cmd_id`` once and repeats its
  one answer): at most one answer per window is generated.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fuzz_budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from common.schemas import Event, EventType
from common.signing import generate_private_key, public_key_b64
from ingest_server.db import make_engine, make_session_factory
from ingest_server.models import ClassSession, DeviceEvent, FeedEvent, SessionWindow
from ingest_server.sessions import record_device_event
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows

# Each example runs on a fresh copy of the seeded database file (hundreds per test).
pytestmark = pytest.mark.sqlite_only(reason="each example copies the seeded SQLite file")

T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
_runs = itertools.count()
RECEIVED = T0 + timedelta(days=1)  # every event reaches the server after it happened
SESSIONS = ("s1", "s2")


def setup_doc(device_key: str) -> dict[str, Any]:
    return {
        "institutions": [{"id": "school", "name": "school"}],
        "classrooms": [
            {
                "id": room,
                "institution_id": "school",
                "name": room,
                "lat": 31.2304,
                "lon": 121.4737,
                "datum": "wgs84",
            }
            for room in ("room", "other-room")
        ],
        "devices": [{"device_id": "cam-1", "classroom_id": "room", "public_key": device_key}],
        "lecturers": [
            {"id": "lect", "institution_id": "school", "name": "lecturer", "token": "t" * 24}
        ],
        "classes": [{"id": "cls", "institution_id": "school", "name": "class"}],
        "sessions": [
            {
                "id": session_id,
                "class_id": "cls",
                "classroom_id": "room",
                "lecturer_id": "lect",
                "start": (T0 + timedelta(hours=3 * n)).isoformat(),
                "duration_min": 90,
            }
            for n, session_id in enumerate(SESSIONS)
        ]
        + [
            {
                "id": "elsewhere",
                "class_id": "cls",
                "classroom_id": "other-room",
                "lecturer_id": "lect",
                "start": (T0 + timedelta(hours=6)).isoformat(),
                "duration_min": 90,
            }
        ],
    }


@pytest.fixture
def seeded_db(tmp_path: Path, sqlite_url: str) -> tuple[Path, list[str]]:
    """A database with a classroom camera, its sessions and their windows' commands."""
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    doc = tmp_path / "setup.json"
    doc.write_text(json.dumps(setup_doc(public_key_b64(generate_private_key()))))
    engine = make_engine(sqlite_url)
    with make_session_factory(engine).begin() as db:
        import_rows(db, read_rows(doc), settings)
    with make_session_factory(engine)() as db:
        cmd_ids = list(db.scalars(select(SessionWindow.cmd_id).order_by(SessionWindow.id)))
    engine.dispose()
    return Path(sqlite_url.removeprefix("sqlite:///")), cmd_ids


@st.composite
def device_events(draw: st.DrawFn, cmd_ids: list[str]) -> list[Event]:
    """Events of cam-1 in the order it made them (strictly increasing device time)."""
    kinds = draw(
        st.lists(
            st.sampled_from(
                [
                    EventType.SESSION_STARTED,
                    EventType.SESSION_STOPPED,
                    EventType.RECORDING_GAP,
                    EventType.CUT_DONE,
                    EventType.CUT_FAILED,
                    EventType.CAMERA_LOST,
                    EventType.ERROR,
                ]
            ),
            min_size=1,
            max_size=10,
        )
    )
    minutes = sorted(draw(st.lists(st.integers(-15, 200), min_size=len(kinds), unique=True)))
    minutes = minutes[: len(kinds)]
    answered: set[str] = set()
    out = []
    for n, (kind, minute) in enumerate(zip(kinds, minutes, strict=False)):
        # Over a minute apart, so the offsets stated (at most 32.5 s apart) keep the order.
        at = T0 + timedelta(minutes=2 * minute, seconds=draw(st.integers(0, 59)))
        offset = draw(st.sampled_from([None, 0.0, 2.5, -30.0]))
        session_id = draw(st.sampled_from([*SESSIONS, "elsewhere", None]))
        data: dict[str, Any] = {}
        cmd_id = None
        if kind in (EventType.CUT_DONE, EventType.CUT_FAILED):
            free = [c for c in cmd_ids if c not in answered]
            if not free:
                continue
            cmd_id = draw(st.sampled_from(free))
            answered.add(cmd_id)
            data = {"upload_id": f"up-{n}"} if kind is EventType.CUT_DONE else {"reason": "x"}
        elif kind is EventType.SESSION_STOPPED:
            data = {"recorded_s": draw(st.sampled_from([None, 60.0, 5400.0, -1.0, "x"]))}
        elif kind is EventType.RECORDING_GAP:
            end = at + timedelta(seconds=draw(st.integers(1, 600)))
            data = {"start": at.isoformat(), "end": draw(st.sampled_from([end.isoformat(), None]))}
        out.append(
            Event(
                event_id=f"ev-{n}",
                device_id="cam-1",
                type=kind,
                at=at,
                clock_offset_s=offset,
                session_id=session_id,
                cmd_id=cmd_id,
                data=data,
            )
        )
    return out


@st.composite
def deliveries(draw: st.DrawFn, events: list[Event]) -> list[Event]:
    """Every event at least once, some several times, in any order."""
    repeats = draw(st.lists(st.sampled_from(events), max_size=len(events) * 2))
    return draw(st.permutations([*events, *repeats]))


def ledger(db_file: Path, target: Path, delivered: list[Event]) -> dict[str, Any]:
    """Deliver ``delivered`` to a copy of the seeded database, one transaction each (as the
    device-message handler does); return everything the ledger decided."""
    shutil.copyfile(db_file, target)
    engine = make_engine(f"sqlite:///{target}")
    factory = make_session_factory(engine)
    try:
        for event in delivered:
            with factory.begin() as db:
                record_device_event(db, event, RECEIVED)
        with factory() as db:
            stored = [
                (
                    r.event_id,
                    r.device_id,
                    r.type,
                    r.at,
                    r.device_at,
                    r.clock_offset_s,
                    r.session_id,
                    r.cmd_id,
                    r.data,
                    r.received_at,
                )
                for r in db.scalars(select(DeviceEvent))
            ]
            sessions = {
                s.id: (
                    s.state,
                    s.device_id,
                    s.opened_at,
                    s.closed_at,
                    s.device_clock_offset_s,
                    s.recorded_s,
                    s.reported_recorded_s,
                )
                for s in db.scalars(select(ClassSession))
            }
            windows = {
                w.cmd_id: (w.upload_id, w.failed_reason) for w in db.scalars(select(SessionWindow))
            }
            feed = Counter((f.kind, f.session_id) for f in db.scalars(select(FeedEvent)))
        return {
            "event_ids": Counter(row[0] for row in stored),
            "events": sorted(stored, key=lambda row: row[0]),
            "sessions": sessions,
            "windows": windows,
            "feed": feed,
        }
    finally:
        engine.dispose()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ledger"
    path.mkdir()
    yield path


@settings(max_examples=examples(40))
@given(data=st.data())
def test_any_order_and_any_repeats_give_the_in_order_ledger(
    seeded_db: tuple[Path, list[str]], workdir: Path, data: st.DataObject
) -> None:
    db_file, cmd_ids = seeded_db
    events = data.draw(device_events(cmd_ids), label="events")
    delivered = data.draw(deliveries(events), label="delivered")
    run = next(_runs)  # new files each time: a copy must not meet an old copy's WAL
    in_order = ledger(db_file, workdir / f"in_order-{run}.db", events)
    shuffled = ledger(db_file, workdir / f"shuffled-{run}.db", delivered)
    # One row per event, whatever was delivered twice.
    assert set(shuffled["event_ids"].values()) <= {1}
    for part in ("events", "sessions", "windows", "feed"):
        assert shuffled[part] == in_order[part], part


def _event(n: int, kind: EventType, minute: int, **data: Any) -> Event:
    return Event(
        event_id=f"ev-{n}",
        device_id="cam-1",
        type=kind,
        at=T0 + timedelta(minutes=minute),
        session_id="s1",
        data=data,
    )


@pytest.mark.parametrize(
    "order",
    [
        pytest.param([1, 0, 2], id="stop-before-its-start"),
        pytest.param([0, 2, 1], id="later-stop-before-earlier"),
        pytest.param([2, 1, 0], id="reversed"),
    ],
)
def test_reordered_stops_close_the_session_at_its_latest_stop(
    seeded_db: tuple[Path, list[str]], workdir: Path, order: list[int]
) -> None:
    """Found by the property above: a stop delivered before its start left the session open
    (with the stop's seconds counted as recorded), and of two stops the one delivered last,
    not the latest, closed it."""
    db_file, _ = seeded_db
    events = [
        _event(0, EventType.SESSION_STARTED, 0),
        _event(1, EventType.SESSION_STOPPED, 40, recorded_s=2400.0),
        _event(2, EventType.SESSION_STOPPED, 90, recorded_s="x"),
    ]
    in_order = ledger(db_file, workdir / "in_order.db", events)
    shuffled = ledger(db_file, workdir / "shuffled.db", [events[i] for i in order])
    state, _, opened, closed, _, recorded, reported = in_order["sessions"]["s1"]
    assert (state, opened, closed) == ("closed", T0, T0 + timedelta(minutes=90))
    assert (recorded, reported) == (2400.0, 2400.0)
    assert shuffled["sessions"] == in_order["sessions"]
    assert shuffled["feed"] == in_order["feed"]
