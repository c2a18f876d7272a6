"""What devices say about their sessions, turned into facts on a real database: device time
into server time, a stop without a start, the camera's own figures, re-requests, durable clip
checks, and the default SQLite under a morning of classes starting together."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ingest_helpers import rooms_school
from rows import stored_clip
from sqlalchemy import select

from common.clock import VirtualClock
from common.schemas import Event, EventType, decode
from common.signing import generate_private_key, public_key_b64
from ingest_server.clip_checks import ClipChecker
from ingest_server.db import make_engine, make_session_factory
from ingest_server.facts import FactReader
from ingest_server.models import (
    ClassSession,
    ClipCheck,
    Device,
    DeviceEvent,
    SessionWindow,
)
from ingest_server.rules.reasons import ReasonCode
from ingest_server.rules.verdict import VerdictState, judge
from ingest_server.sessions import record_device_event
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore

T0 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
START = T0 + timedelta(hours=1)
FAST = 1200.0  # the camera's clock runs 20 min fast


@pytest.fixture
def db_world(tmp_path: Path, sqlite_url: str) -> Any:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    path = tmp_path / "setup.json"
    path.write_text(json.dumps(rooms_school(20, START)))
    with factory.begin() as db:
        import_rows(db, read_rows(path), settings)
    yield settings, factory
    engine.dispose()


_seq = iter(range(10**6))


def event(kind: EventType, at: datetime, offset: float | None, **data: Any) -> Event:
    return Event(
        event_id=f"ev-{next(_seq)}",
        device_id="cam-0",
        type=kind,
        at=at,
        session_id="s0",
        clock_offset_s=offset,
        data=data,
    )


def fast(at: datetime) -> datetime:
    """What the 20-minute-fast camera's clock reads at server time ``at``."""
    return at + timedelta(seconds=FAST)


def test_device_times_are_stored_as_server_time_and_the_skew_is_shown(db_world: Any) -> None:
    settings, factory = db_world
    end = START + timedelta(minutes=90)
    with factory.begin() as db:
        record_device_event(db, event(EventType.SESSION_STARTED, fast(START), FAST))
        gap = (fast(START + timedelta(minutes=30)), fast(START + timedelta(minutes=31)))
        record_device_event(
            db,
            event(
                EventType.RECORDING_GAP,
                fast(START + timedelta(minutes=31)),
                FAST,
                start=gap[0].isoformat(),
                end=gap[1].isoformat(),
            ),
        )
        record_device_event(
            db, event(EventType.SESSION_STOPPED, fast(end), FAST, recorded_s=89 * 60.0)
        )
    with factory() as db:
        row = db.get(ClassSession, "s0")
        assert row is not None
        assert row.opened_at == START and row.closed_at == end
        assert row.device_clock_offset_s == FAST
        assert row.recorded_s == pytest.approx(89 * 60)
        stored = db.scalars(select(DeviceEvent).order_by(DeviceEvent.id)).first()
        assert stored is not None and stored.device_at == fast(START) and stored.at == START
        evidence = FactReader(settings).evidence(db, row)
    assert evidence.recorded_s == pytest.approx(89 * 60)
    assert evidence.reported_recorded_s == 89 * 60
    # The photos were taken on time by the server's clock: only the skew is worth a word
    # among the session's own reasons.
    verdict = judge(evidence, end + timedelta(minutes=1))
    codes = {r.code for r in verdict.reasons}
    assert ReasonCode.DEVICE_CLOCK_SKEWED in codes
    assert ReasonCode.SHORT_DURATION not in codes
    assert ReasonCode.RECORDING_INCONSISTENT not in codes


def test_a_stop_without_a_start_changes_nothing(db_world: Any) -> None:
    _, factory = db_world
    with factory.begin() as db:
        record_device_event(db, event(EventType.SESSION_STOPPED, START, 0.0, recorded_s=60.0))
    with factory() as db:
        row = db.get(ClassSession, "s0")
        assert row is not None
        assert (row.state, row.closed_at, row.opened_at) == ("scheduled", None, None)


def test_a_power_cut_reported_as_a_gap_is_not_recorded_time(db_world: Any) -> None:
    settings, factory = db_world
    end = START + timedelta(minutes=90)
    cut = (START + timedelta(minutes=30), START + timedelta(minutes=50))
    with factory.begin() as db:
        record_device_event(db, event(EventType.SESSION_STARTED, START, 0.0))
        record_device_event(
            db,
            event(
                EventType.RECORDING_GAP,
                cut[1],
                0.0,
                start=cut[0].isoformat(),
                end=cut[1].isoformat(),
                reason="agent_restart",
            ),
        )
        record_device_event(db, event(EventType.SESSION_STOPPED, end, 0.0, recorded_s=70 * 60.0))
    with factory() as db:
        row = db.get(ClassSession, "s0")
        assert row is not None
        evidence = FactReader(settings).evidence(db, row)
    assert evidence.recorded_s == pytest.approx(70 * 60)
    verdict = judge(evidence, end + timedelta(days=2))
    assert verdict.state is VerdictState.REJECTED
    assert ReasonCode.SHORT_DURATION in {r.code for r in verdict.reasons}


def test_a_camera_that_hides_a_gap_disagrees_with_itself(db_world: Any) -> None:
    settings, factory = db_world
    end = START + timedelta(minutes=90)
    with factory.begin() as db:
        record_device_event(db, event(EventType.SESSION_STARTED, START, 0.0))
        record_device_event(db, event(EventType.SESSION_STOPPED, end, 0.0, recorded_s=70 * 60.0))
    with factory() as db:
        row = db.get(ClassSession, "s0")
        assert row is not None
        evidence = FactReader(settings).evidence(db, row)
    codes = {r.code for r in judge(evidence, end + timedelta(days=2)).reasons}
    assert ReasonCode.RECORDING_INCONSISTENT in codes


def test_cut_failed_is_said_at_once(db_world: Any) -> None:
    settings, factory = db_world
    with factory.begin() as db:
        window = db.scalars(select(SessionWindow).where(SessionWindow.session_id == "s0")).first()
        assert window is not None
        cmd_id = window.cmd_id
        failed = Event(
            event_id="ev-cut-failed",
            device_id="cam-0",
            type=EventType.CUT_FAILED,
            at=START + timedelta(hours=2),
            cmd_id=cmd_id,
            session_id="s0",
            data={"reason": "not_recorded"},
        )
        assert record_device_event(db, failed) == {"s0"}
    with factory() as db:
        row = db.get(ClassSession, "s0")
        assert row is not None
        evidence = FactReader(settings).evidence(db, row)
    reasons = judge(evidence, START + timedelta(hours=2)).reasons
    assert ReasonCode.CLIP_NOT_RECORDED in {r.code for r in reasons}


def _stored_clip(factory: Any, store: EvidenceStore, data: bytes) -> int:
    now = START + timedelta(hours=2)
    with factory.begin() as db:
        clip = stored_clip(
            db, "cam-0", "u1", START, START + timedelta(minutes=1), now, path="clips/cam-0/u1.mp4"
        )
        clip_id = clip.id
    store.put_bytes("clips/cam-0/u1.mp4", data)
    return clip_id


def test_a_check_left_pending_by_a_crash_runs_at_the_next_start(
    db_world: Any, tmp_path: Path
) -> None:
    settings, factory = db_world
    store = EvidenceStore(settings.evidence_dir)
    clip_id = _stored_clip(factory, store, b"not a video at all" * 100)
    changed: list[set[str]] = []
    checker = ClipChecker(factory, store, changed.append, VirtualClock(start=START))
    try:
        checker.wake().result(timeout=60)
    finally:
        checker.close()
    with factory() as db:
        check = db.get(ClipCheck, clip_id)
    assert check is not None and check.checked_at is not None
    assert check.error and check.decoded_frames == 0  # unreadable, and said so


def test_a_check_that_fails_on_our_side_stays_pending(db_world: Any, tmp_path: Path) -> None:
    settings, factory = db_world
    store = EvidenceStore(settings.evidence_dir)
    clip_id = _stored_clip(factory, store, b"x")
    store.path_of("clips/cam-0/u1.mp4").unlink()  # the store lost it for a moment
    checker = ClipChecker(factory, store, lambda _: None, VirtualClock(start=START))
    try:
        checker.wake().result(timeout=60)
    finally:
        checker.close()
    with factory() as db:
        check = db.get(ClipCheck, clip_id)
    assert check is not None and check.checked_at is None and check.attempts >= 1


def test_twenty_classes_starting_together_lose_no_event_on_sqlite(db_world: Any) -> None:
    """Twenty cameras report their start at once, each in its own connection and transaction
    (read, then write): none may fail with "database is locked"."""
    _, factory = db_world
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def start(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            for n in range(5):
                with factory.begin() as db:
                    record_device_event(
                        db,
                        Event(
                            event_id=f"cam-{i}-start-{n}",
                            device_id=f"cam-{i}",
                            type=EventType.SESSION_STARTED,
                            at=START + timedelta(seconds=n),
                            session_id=f"s{i}",
                            clock_offset_s=0.0,
                        ),
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with factory() as db:
        opened = db.scalars(select(ClassSession).where(ClassSession.state == "open")).all()
        assert len(opened) == 20
        assert db.query(DeviceEvent).count() == 100
        assert db.get(Device, "cam-0") is not None


def test_the_feed_of_an_honest_class_never_says_rejected(tmp_path: Path, sqlite_url: str) -> None:
    """A grace (10 min) far shorter than the class, and a camera that goes offline at the end
    and comes back hours later: the real scheduler asks for the windows, the clips arrive late,
    and the verdict goes from pending to verified without ever passing through rejected."""
    from ingest_helpers import quiet_heartbeat, verdict_rig

    from common.schemas import Status, StatusState
    from common.topics import UpKind, UpTopic
    from ingest_server.models import FeedEvent
    from simulators.phone import make_photo

    settings = Settings(
        data_dir=tmp_path, database_url=sqlite_url, clip_grace_s=600, photo_grace_s=3600
    )
    engine = make_engine(sqlite_url)
    rig = verdict_rig(settings, engine, rooms_school(1, START), START - timedelta(minutes=5))
    factory, clock, fleet, scheduler, client = (
        rig.factory,
        rig.clock,
        rig.fleet,
        rig.scheduler,
        rig.api,
    )
    beats = iter(range(1, 10**6))

    def heartbeat() -> None:
        beat = quiet_heartbeat("cam-0", clock.now(), next(beats), recording=True)
        fleet.handle(UpTopic("cam-0", UpKind.HEARTBEAT), beat.to_bytes())

    def say(kind: EventType, **data: Any) -> None:
        fleet.handle(
            UpTopic("cam-0", UpKind.EVENT),
            event(kind, clock.now(), 0.0, **data)
            .model_copy(update={"device_id": "cam-0"})
            .to_bytes(),
        )

    def run(minutes: float, online: bool = True) -> list[Any]:
        asked = []
        for _ in range(int(minutes)):
            if online:
                heartbeat()
            asked += [o for o in scheduler.tick() if o.topic.endswith("/cmd")]
            clock.advance(60)
        return asked

    def photo(kind: str, at: datetime) -> None:
        jpeg = make_photo(
            taken_at=at, lat=31.2304, lon=121.4737, scene_seed=7 if kind == "opening" else 8
        )
        response = client.post(
            f"/api/v1/sessions/s0/photos/{kind}",
            files={"file": (f"{kind}.jpg", jpeg)},
            headers={"Authorization": f"Bearer {'tok-0' * 4}"},
        )
        assert response.status_code in (200, 201), response.text

    run(5)
    say(EventType.SESSION_STARTED)
    photo("opening", clock.now())
    run(90)
    say(EventType.SESSION_STOPPED, recorded_s=90 * 60.0)
    photo("closing", clock.now())
    run(2)  # the windows are asked for
    offline = Status(device_id="cam-0", state=StatusState.OFFLINE, at=clock.now())
    fleet.handle(UpTopic("cam-0", UpKind.STATUS), offline.to_bytes())
    run(5 * 60, online=False)  # five hours without 4G: 30 times the clip grace
    asked = run(1)  # back online: asked again
    assert {o.topic for o in asked} == {"classcam/v1/down/cam-0/cmd"}
    with factory.begin() as db:
        windows = db.scalars(select(SessionWindow).where(SessionWindow.session_id == "s0")).all()
        for n, window in enumerate(windows):
            stored_clip(
                db,
                "cam-0",
                f"u{n}",
                window.start,
                window.end,
                clock.now(),
                cmd_id=window.cmd_id,
                sha256=f"{n:064x}",
                decoded=True,
            )
    scheduler.sessions_changed({"s0"})
    run(2)
    with factory() as db:
        states = [
            json.loads(e.payload)["state"]
            for e in db.scalars(
                select(FeedEvent)
                .where(FeedEvent.kind == "verdict_changed", FeedEvent.session_id == "s0")
                .order_by(FeedEvent.seq)
            )
        ]
    engine.dispose()
    assert states[-1] == "verified", states
    assert "rejected" not in states


def test_a_long_read_holds_no_write_lock(db_world: Any) -> None:
    """An API request reads through a reader session for as long as it takes; the ingest
    thread's writes go on meanwhile (a write session would hold SQLite's lock)."""
    from ingest_server.db import reader_factory

    _, factory = db_world
    done = threading.Event()

    def write() -> None:
        with factory.begin() as db:
            record_device_event(db, event(EventType.SESSION_STARTED, START, 0.0))
        done.set()

    with reader_factory(factory)() as reading:
        assert reading.get(ClassSession, "s0") is not None  # the read transaction is open
        writer = threading.Thread(target=write)
        writer.start()
        assert done.wait(10), "the write waited for a reader"
        writer.join()


@pytest.mark.parametrize("figure", [b"Infinity", b"-1", b"1e300", b"NaN", b'"5400"', b"true"])
def test_a_camera_figure_that_is_no_number_of_seconds_is_not_taken(
    db_world: Any, figure: bytes
) -> None:
    settings, factory = db_world
    end = START + timedelta(minutes=90)
    stopped = (
        b'{"event_id":"e-odd","device_id":"cam-0","type":"session_stopped","at":"'
        + end.isoformat().encode()
        + b'","clock_offset_s":0,"session_id":"s0","data":{"recorded_s":'
        + figure
        + b"}}"
    )
    with factory.begin() as db:
        record_device_event(db, event(EventType.SESSION_STARTED, START, 0.0))
        record_device_event(db, decode(Event, stopped))
    with factory() as db:
        row = db.get(ClassSession, "s0")
        assert row is not None and row.reported_recorded_s is None
        evidence = FactReader(settings).evidence(db, row)
    assert evidence.reported_recorded_s is None
    judge(evidence, end + timedelta(days=1))  # no crash


def test_an_event_cannot_have_happened_after_the_server_received_it(db_world: Any) -> None:
    """A camera with no offset estimate yet whose clock runs an hour fast (or one that lies)
    reports its stop an hour "later": it is stored at when it was received."""
    _, factory = db_world
    received = START + timedelta(minutes=90)
    with factory.begin() as db:
        record_device_event(db, event(EventType.SESSION_STARTED, START, 0.0), START)
        stop = event(EventType.SESSION_STOPPED, received + timedelta(hours=1), None)
        record_device_event(db, stop, received)
    with factory() as db:
        row = db.get(ClassSession, "s0")
        assert row is not None and row.closed_at == received
        assert row.recorded_s == pytest.approx(90 * 60)


def _move(factory: Any, device_id: str, classroom_id: str | None, enabled: bool = True) -> None:
    with factory.begin() as db:
        device = db.get(Device, device_id)
        assert device is not None
        device.classroom_id, device.enabled = classroom_id, enabled


def test_a_session_is_filmed_by_the_camera_its_room_had_when_it_began(
    db_world: Any, tmp_path: Path
) -> None:
    """The scheduler binds a session that has begun to its classroom's camera of that moment.
    A camera moved in after the class (which filmed room 1 meanwhile) speaks for nothing of
    room 0's session: its start and stop are ignored, and its clips do not prove the windows."""
    from ingest_server.device_messages import DeviceMessages
    from ingest_server.scheduler import Scheduler

    settings, factory = db_world
    clock = VirtualClock(start=START + timedelta(minutes=1))
    fleet = DeviceMessages(factory, settings.heartbeat_timeout_s, clock)
    Scheduler(settings, factory, fleet, lambda ids: None, clock).tick()
    with factory() as db:
        row = db.get(ClassSession, "s0")
        assert row is not None and row.device_id == "cam-0"
    _move(factory, "cam-0", None, enabled=False)  # room 0's camera "breaks" after class
    _move(factory, "cam-1", "room-0")
    forged = [
        Event(
            event_id=f"moved-{n}",
            device_id="cam-1",
            type=kind,
            at=at,
            session_id="s0",
            clock_offset_s=0.0,
        )
        for n, (kind, at) in enumerate(
            [
                (EventType.SESSION_STARTED, START),
                (EventType.SESSION_STOPPED, START + timedelta(minutes=90)),
            ]
        )
    ]
    with factory.begin() as db:
        assert [record_device_event(db, e, START + timedelta(hours=3)) for e in forged] == [
            set(),
            set(),
        ]
    with factory() as db:
        row = db.get(ClassSession, "s0")
        assert row is not None and (row.opened_at, row.closed_at) == (None, None)
        evidence = FactReader(settings).evidence(db, row)
    assert evidence.session.device_id == "cam-0"


def test_a_camera_swapped_after_the_class_changes_nothing_of_it(db_world: Any) -> None:
    """Verified on cam-0; a week later cam-0 is replaced by cam-new and moved away. The
    session is still cam-0's, and a stop cam-0 had queued before its move still counts."""
    from ingest_server.crud import ClassroomHasCamera, register_device

    settings, factory = db_world
    with factory.begin() as db:
        record_device_event(db, event(EventType.SESSION_STARTED, START, 0.0), START)
    _move(factory, "cam-0", "room-5-store", enabled=False)
    with factory.begin() as db, pytest.raises(ClassroomHasCamera):
        register_device(db, "cam-new", public_key_b64(generate_private_key()), "room-1")
    with factory.begin() as db:
        register_device(db, "cam-new", public_key_b64(generate_private_key()), "room-0")
    end = START + timedelta(minutes=90)
    with factory.begin() as db:
        stop = event(EventType.SESSION_STOPPED, end, 0.0, recorded_s=5400.0)
        assert record_device_event(db, stop, end + timedelta(days=7)) == {"s0"}
    with factory() as db:
        row = db.get(ClassSession, "s0")
        assert row is not None and row.device_id == "cam-0" and row.closed_at == end
        assert FactReader(settings).evidence(db, row).session.device_id == "cam-0"


def test_import_refuses_two_cameras_in_one_classroom(db_world: Any, tmp_path: Path) -> None:
    from ingest_server.setup_import import ImportFailed

    settings, factory = db_world
    key = public_key_b64(generate_private_key())
    doc = {
        "devices": [
            {"device_id": "cam-new", "classroom_id": "room-3", "public_key": key},
            {"device_id": "cam-a", "classroom_id": "room-7", "public_key": key},
            {"device_id": "cam-b", "classroom_id": "room-7", "public_key": key},
        ]
    }
    path = tmp_path / "more.json"
    path.write_text(json.dumps(doc))
    with factory.begin() as db, pytest.raises(ImportFailed) as failed:
        import_rows(db, read_rows(path), settings)
    text = " ".join(e.message for e in failed.value.errors)
    assert "room-3 already has camera cam-3" in text
    assert "room-7 gets two cameras: cam-a (line 2) and cam-b" in text
    # Two cameras trading rooms in one file is fine.
    swap = [
        {"device_id": "cam-3", "classroom_id": "room-4", "public_key": key},
        {"device_id": "cam-4", "classroom_id": "room-3", "public_key": key},
    ]
    path.write_text(json.dumps({"devices": swap}))
    with factory.begin() as db:
        assert import_rows(db, read_rows(path), settings)["devices"] == 2


def test_import_refuses_two_sessions_in_one_classroom_at_once(
    db_world: Any, tmp_path: Path
) -> None:
    """One recording would prove both; back to back is fine."""
    from ingest_server.setup_import import ImportFailed

    settings, factory = db_world
    doc = rooms_school(1, START)
    overlapping = {**doc["sessions"][0], "id": "s-dup", "start": (START + timedelta(hours=1))}
    after = {**doc["sessions"][0], "id": "s-next", "start": START + timedelta(minutes=90)}
    path = tmp_path / "more.json"
    path.write_text(json.dumps({"sessions": [overlapping, after]}, default=str))
    with factory.begin() as db, pytest.raises(ImportFailed) as failed:
        import_rows(db, read_rows(path), settings)
    messages = [(e.line, e.message) for e in failed.value.errors]
    assert any(
        line == 1 and "room-0 would hold two sessions at once" in text and "s0 in" in text
        for line, text in messages
    ), messages
    # s-next, right after s0, clashes only with s-dup.
    assert not [t for line, t in messages if line == 2 and "s0 in" in t], messages
    path.write_text(json.dumps({"sessions": [after]}, default=str))
    with factory.begin() as db:
        assert import_rows(db, read_rows(path), settings)["sessions"] == 1
