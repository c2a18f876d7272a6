"""Setup import, the secrecy and timing of window requests, presence, and the photo API,
on a real SQLite database with a virtual clock."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from api_clients import authorize
from fastapi.testclient import TestClient
from ingest_helpers import quiet_heartbeat
from rows import stored_clip, stored_upload

from common.clock import VirtualClock
from common.commands import Command, CommandType, Schedule
from common.schemas import Status, StatusState
from common.signing import generate_private_key, public_key_b64
from common.topics import UpKind, UpTopic
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.db import make_engine, make_session_factory
from ingest_server.device_messages import DeviceMessages
from ingest_server.models import ClassSession, SessionWindow
from ingest_server.scheduler import Scheduler
from ingest_server.settings import Settings
from ingest_server.setup_import import ImportFailed, import_rows, read_rows
from ingest_server.store import EvidenceStore
from simulators.phone import make_photo

T0 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
TOKEN = "lecturer-token-0123456789"


def setup_doc(device_key: str, start: datetime = T0 + timedelta(hours=1)) -> dict[str, Any]:
    return {
        "institutions": [{"id": "school", "name": "职业培训学校"}],
        "classrooms": [
            {
                "id": "room",
                "institution_id": "school",
                "name": "101",
                "lat": 31.2304,
                "lon": 121.4737,
                "datum": "wgs84",
            }
        ],
        "devices": [{"device_id": "cam-1", "classroom_id": "room", "public_key": device_key}],
        "lecturers": [{"id": "lect", "institution_id": "school", "name": "王老师", "token": TOKEN}],
        "classes": [{"id": "cls", "institution_id": "school", "name": "电工"}],
        "sessions": [
            {
                "id": "s1",
                "class_id": "cls",
                "classroom_id": "room",
                "lecturer_id": "lect",
                "start": start.isoformat(),
                "duration_min": 90,
            }
        ],
    }


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    path = tmp_path / "setup.json"
    path.write_text(json.dumps(setup_doc(public_key_b64(generate_private_key()))))
    with factory.begin() as db:
        counts = import_rows(db, read_rows(path), settings)
    clock = VirtualClock(start=T0)
    fleet = DeviceMessages(factory, settings.heartbeat_timeout_s, clock)
    recomputed: list[set[str]] = []
    scheduler = Scheduler(settings, factory, fleet, recomputed.append, clock)
    yield {
        "settings": settings,
        "factory": factory,
        "clock": clock,
        "fleet": fleet,
        "scheduler": scheduler,
        "counts": counts,
        "recomputed": recomputed,
        "store": EvidenceStore(settings.evidence_dir),
    }
    engine.dispose()


def test_import_creates_everything_and_draws_secret_windows(world: dict[str, Any]):
    assert world["counts"] == {
        "institutions": 1,
        "classrooms": 1,
        "devices": 1,
        "lecturers": 1,
        "classes": 1,
        "sessions": 1,
    }
    with world["factory"]() as db:
        windows = db.query(SessionWindow).filter_by(session_id="s1").all()
    assert len(windows) == 3
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=2, minutes=30)
    assert all(start <= w.start < w.end <= end for w in windows)


def test_import_errors_name_line_and_field_and_import_nothing(tmp_path: Path, sqlite_url: str):
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    csv = tmp_path / "classrooms.csv"
    csv.write_text(
        "id,institution_id,name,lat,lon,datum\n"
        "r1,school,A,31.2,121.4,wgs84\n"
        "r2,school,B,131.2,121.4,wgs84\n"
        "r3,nowhere,C,31.2,121.4,gcj02\n"
        "r 4,school,D,31.2,121.4,mars\n"
    )
    doc = tmp_path / "institutions.csv"
    doc.write_text("id,name\nschool,学校\n")
    factory = make_session_factory(make_engine(sqlite_url))
    with factory.begin() as db:
        import_rows(db, read_rows(doc), settings)
    with pytest.raises(ImportFailed) as info, factory.begin() as db:
        import_rows(db, read_rows(csv), settings)
    found = {(e.line, e.field) for e in info.value.errors}
    assert {(3, "lat"), (4, "institution_id"), (5, "datum"), (5, "id")} <= found
    assert "classrooms line 3: lat" in str(info.value.errors[0])
    with factory() as db:
        assert db.execute(db.query(ClassSession).statement).first() is None
        from ingest_server.models import Classroom

        assert db.query(Classroom).count() == 0, "all or nothing"


def _commands(outbound: list[Any]) -> list[Command]:
    return [Command.model_validate_json(o.payload) for o in outbound if o.topic.endswith("/cmd")]


def test_windows_are_secret_until_the_session_is_over(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
):
    clock, scheduler, factory = world["clock"], world["scheduler"], world["factory"]
    caplog.set_level(logging.DEBUG)
    first = scheduler.tick()
    schedules = [Schedule.model_validate_json(o.payload) for o in first if o.retain]
    assert schedules and schedules[0].sessions[0].session_id == "s1"
    assert schedules[0].sessions[0].windows == 3
    with factory() as db:
        windows = db.query(SessionWindow).filter_by(session_id="s1").all()
        secrets = {w.start for w in windows} | {w.end for w in windows}
    client = TestClient(
        create_app(
            ApiContext(
                world["settings"],
                factory,
                world["store"],
                recompute=lambda ids: None,
                clock=world["clock"],
            )
        )
    )
    authorize(client)
    # Walk through the class minute by minute: nothing names a window before the end.
    seen: list[Command] = []
    while clock.now() < T0 + timedelta(hours=2, minutes=30):
        seen += _commands(scheduler.tick())
        view = client.get("/api/v1/sessions/s1").json()
        assert view["windows"] == [] and view["windows_total"] == 3
        clock.advance(60)
    assert seen == []
    for secret in secrets:
        for text in (secret.isoformat(), secret.strftime("%H:%M:%S")):
            assert text not in caplog.text
            assert text not in json.dumps(view)
    clock.advance(world["settings"].window_request_delay_s + 1)
    cuts = _commands(scheduler.tick())
    assert sorted((c.start, c.end) for c in cuts) == sorted((w.start, w.end) for w in windows)
    assert all(c.type == CommandType.CUT and c.session_id == "s1" for c in cuts)
    assert len(client.get("/api/v1/sessions/s1").json()["windows"]) == 3
    # Asked once; asked again with the same cmd_id when the camera comes back online.
    assert _commands(scheduler.tick()) == []
    fleet: DeviceMessages = world["fleet"]
    status = Status(device_id="cam-1", state=StatusState.ONLINE, at=clock.now())
    fleet.on_online = scheduler.device_online
    fleet.handle(UpTopic("cam-1", UpKind.STATUS), status.to_bytes())
    again = _commands(scheduler.tick())
    assert {c.cmd_id for c in again} == {c.cmd_id for c in cuts}


def _heartbeat(clock: VirtualClock, seq: int) -> bytes:
    return quiet_heartbeat("cam-1", clock.now(), seq, uptime_s=seq).to_bytes()


def test_presence_from_status_heartbeats_and_their_timeout(world: dict[str, Any]):
    clock, fleet, factory = world["clock"], world["fleet"], world["factory"]
    client = TestClient(
        create_app(
            ApiContext(
                world["settings"],
                factory,
                world["store"],
                recompute=lambda ids: None,
                clock=world["clock"],
            )
        )
    )
    authorize(client)
    assert client.get("/api/v1/devices").json()[0]["online"] is False
    fleet.handle(UpTopic("cam-1", UpKind.HEARTBEAT), _heartbeat(clock, 1))
    assert client.get("/api/v1/devices").json()[0]["online"] is True
    clock.advance(89)
    assert fleet.sweep_timeouts() == []
    clock.advance(2)
    assert fleet.sweep_timeouts() == ["cam-1"]
    device = client.get("/api/v1/devices").json()[0]
    assert device["online"] is False and device["heartbeat"]["seq"] == 1
    fleet.handle(
        UpTopic("cam-1", UpKind.STATUS),
        Status(device_id="cam-1", state=StatusState.ONLINE).to_bytes(),
    )
    fleet.handle(UpTopic("cam-1", UpKind.HEARTBEAT), b"{not json")
    assert fleet.counters["bad_heartbeat"] == 1
    feed = client.get("/api/v1/feed").json()["events"]
    assert [e["kind"] for e in feed if e["kind"].startswith("device_")] == [
        "device_online",
        "device_offline",
        "device_online",
    ]


def test_photo_api_refuses_clearly(world: dict[str, Any]):
    recomputed: list[set[str]] = []
    client = TestClient(
        create_app(
            ApiContext(
                world["settings"], world["factory"], world["store"], recompute=recomputed.append
            )
        )
    )
    url = "/api/v1/sessions/s1/photos/opening"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    good = make_photo(taken_at=T0 + timedelta(hours=1), lat=31.2304, lon=121.4737, scene_seed=1)
    assert client.post(url, files={"file": ("a.jpg", good)}).status_code == 401
    assert (
        client.post(
            url, files={"file": ("a.jpg", good)}, headers={"Authorization": "Bearer nope"}
        ).status_code
        == 401
    )
    assert (
        client.post(
            "/api/v1/sessions/nope/photos/opening", files={"file": ("a.jpg", good)}, headers=auth
        ).status_code
        == 404
    )
    assert (
        client.post(
            "/api/v1/sessions/s1/photos/selfie", files={"file": ("a.jpg", good)}, headers=auth
        ).status_code
        == 422
    )
    text = client.post(url, files={"file": ("a.txt", b"hello, not a picture")}, headers=auth)
    assert text.status_code == 415 and text.json()["detail"]["reason"] == "not_an_image"
    bare = make_photo(taken_at=None, lat=None, lon=None, scene_seed=2, with_exif=False)
    none = client.post(url, files={"file": ("b.jpg", bare)}, headers=auth)
    assert none.status_code == 422 and none.json()["detail"]["reason"] == "no_time"
    world["settings"].max_photo_bytes = 1000
    big = client.post(url, files={"file": ("c.jpg", good)}, headers=auth)
    assert big.status_code == 413
    world["settings"].max_photo_bytes = 15 * 1024 * 1024
    ok = client.post(url, files={"file": ("a.jpg", good)}, headers=auth)
    assert ok.status_code == 201, ok.text
    body = ok.json()
    assert body["time_source"] == "exif" and body["datum"] == "wgs84"
    assert (world["settings"].evidence_dir / body["path"]).read_bytes() == good
    assert recomputed == [{"s1"}]
    app_fields = client.post(
        url,
        files={"file": ("b.jpg", bare)},
        headers=auth,
        data={
            "taken_at": (T0 + timedelta(hours=1)).isoformat(),
            "lat": "31.2284",
            "lon": "121.4781",
            "datum": "gcj02",
        },
    )
    assert app_fields.status_code == 201 and app_fields.json()["place_source"] == "app"


def test_presence_runs_on_server_time_whatever_the_device_clock_says(world: dict[str, Any]):
    """A status message's ``at`` is the device's clock; the will (sent by the broker) and the
    heartbeat timeout are server time. Mixing them must not freeze or invent outages."""
    from ingest_server.facts import offline_intervals

    clock, fleet, factory = world["clock"], world["fleet"], world["factory"]
    up = UpTopic("cam-1", UpKind.STATUS)
    # A clock an hour fast: the device is online, then falls silent. It must time out.
    ahead = Status(device_id="cam-1", state=StatusState.ONLINE, at=clock.now() + timedelta(hours=1))
    fleet.handle(up, ahead.to_bytes())
    clock.advance(world["settings"].heartbeat_timeout_s + 1)
    assert fleet.sweep_timeouts() == ["cam-1"]
    # A clock an hour slow: online again after a short outage; the outage must have ended.
    since = clock.now()
    clock.advance(60)
    behind = Status(
        device_id="cam-1", state=StatusState.ONLINE, at=clock.now() - timedelta(hours=1)
    )
    fleet.handle(up, behind.to_bytes())
    clock.advance(3600)
    with factory() as db:
        intervals = offline_intervals(
            db, "cam-1", since - timedelta(seconds=world["settings"].heartbeat_timeout_s + 2)
        )
    # The timeout marks it offline from when it was last seen, not from when the sweep ran.
    outage = world["settings"].heartbeat_timeout_s + 1 + 60
    assert [(i.end - i.start).total_seconds() if i.end else None for i in intervals] == [outage]


def test_every_window_of_a_session_with_a_long_id_has_its_own_cut_command(
    tmp_path: Path, sqlite_url: str
):
    """Ids may be 64 characters long; the cut commands of its windows must still differ, or
    the device answers the second and third requests as repeats of the first."""
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    doc = setup_doc(public_key_b64(generate_private_key()))
    long_id = "s" * 64
    doc["sessions"][0]["id"] = long_id
    path = tmp_path / "setup.json"
    path.write_text(json.dumps(doc))
    factory = make_session_factory(make_engine(sqlite_url))
    with factory.begin() as db:
        import_rows(db, read_rows(path), settings)
    with factory() as db:
        cmd_ids = [w.cmd_id for w in db.query(SessionWindow).filter_by(session_id=long_id)]
    assert len(cmd_ids) == 3 and len(set(cmd_ids)) == 3
    assert all(len(c) <= 64 and c.startswith("cut-") for c in cmd_ids)


def test_each_open_or_close_by_the_lecturer_is_a_new_command(tmp_path: Path, sqlite_url: str):
    """The device runs a cmd_id once and answers repeats: a second open (after a close) of a
    session with a long id must not look like the first."""
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    doc = setup_doc(public_key_b64(generate_private_key()))
    long_id = "s" * 64
    doc["sessions"][0]["id"] = long_id
    path = tmp_path / "setup.json"
    path.write_text(json.dumps(doc))
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    with factory.begin() as db:
        import_rows(db, read_rows(path), settings)
    sent: list[Command] = []
    clock = VirtualClock(start=T0)
    context = ApiContext(
        settings,
        factory,
        EvidenceStore(settings.evidence_dir),
        recompute=lambda ids: None,
        send_command=lambda device, cmd: sent.append(cmd),
        clock=clock,
    )
    client = TestClient(create_app(context))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for action in ("open", "close", "open"):
        assert client.post(f"/api/v1/sessions/{long_id}/{action}", headers=auth).status_code == 202
        clock.advance(60)
    assert len({c.cmd_id for c in sent}) == 3
    assert all(len(c.cmd_id) <= 64 for c in sent)
    # Opened an hour early, the camera still records to the scheduled end, not 90 min on.
    first = sent[0]
    assert first.duration_s is not None
    planned_end = first.issued_at + timedelta(seconds=first.duration_s)
    assert planned_end == T0 + timedelta(hours=2, minutes=30)
    engine.dispose()


def test_a_device_cannot_report_on_another_classrooms_session(world: dict[str, Any]):
    """Only the camera of the session's classroom may open, close or shorten it."""
    from common.schemas import Event, EventType
    from ingest_server.crud import register_device
    from ingest_server.sessions import session_recorded_seconds

    factory, fleet, clock = world["factory"], world["fleet"], world["clock"]
    with factory.begin() as db:
        register_device(db, "cam-2", public_key_b64(generate_private_key()), None)
    start = T0 + timedelta(hours=1)
    for n, (device, kind, at) in enumerate(
        [
            ("cam-1", EventType.SESSION_STARTED, start),
            ("cam-2", EventType.SESSION_STOPPED, start + timedelta(minutes=5)),
        ]
    ):
        event = Event(
            event_id=f"e{n}", device_id=device, type=kind, at=at, session_id="s1", data={}
        )
        fleet.handle(UpTopic(device, UpKind.EVENT), event.model_dump_json().encode())
    clock.advance(3600)
    with factory() as db:
        row = db.get(ClassSession, "s1")
        assert row is not None
        assert row.state == "open" and row.closed_at is None
        assert session_recorded_seconds(db, "s1") == 0.0


def test_a_slow_recompute_cannot_overwrite_a_newer_verdict_on_postgresql(
    tmp_path: Path, pg_url: str
):
    """The scheduler and the photo API recompute the same session from different threads.
    One that read the facts before a new photo must not write its verdict over the verdict of
    one that read them after (PostgreSQL's READ COMMITTED does not stop it by itself)."""
    import threading

    from sqlalchemy import event

    from ingest_server.db import migrate
    from ingest_server.models import Photo
    from ingest_server.verdicts import VerdictKeeper

    migrate(pg_url)
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    engine = make_engine(pg_url)
    factory = make_session_factory(engine)
    path = tmp_path / "setup.json"
    path.write_text(json.dumps(setup_doc(public_key_b64(generate_private_key()))))
    with factory.begin() as db:
        import_rows(db, read_rows(path), settings)
    clock = VirtualClock(start=T0 + timedelta(days=1))  # every grace period is over
    keeper = VerdictKeeper(factory, settings, clock)
    gate = threading.Event()

    def hold_the_stale_writer(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name == "stale" and statement.startswith(
            "UPDATE class_sessions"
        ):
            gate.wait(10)

    event.listen(engine, "before_cursor_execute", hold_the_stale_writer)
    stale = threading.Thread(target=keeper.recompute, args=({"s1"},), name="stale")
    stale.start()  # reads: no photo at all
    time.sleep(0.5)
    with factory.begin() as db:
        db.add(
            Photo(
                session_id="s1",
                lecturer_id="lect",
                kind="opening",
                sha256="a" * 64,
                phash="0" * 16,
                path="photos/x.jpg",
                taken_at=T0 + timedelta(hours=1),
                time_source="exif",
                lat=31.2304,
                lon=121.4737,
                datum="wgs84",
                place_source="exif",
                width=10,
                height=10,
                received_at=clock.now(),
            )
        )
    fresh = threading.Thread(target=keeper.recompute, args=({"s1"},), name="fresh")
    fresh.start()  # reads the photo
    fresh.join(1.0)
    gate.set()
    stale.join(10)
    fresh.join(10)
    with factory() as db:
        row = db.get(ClassSession, "s1")
        assert row is not None
        kinds = {
            r["params"].get("kind")
            for r in json.loads(row.verdict_reasons)
            if r["code"] == "photo_missing"
        }
    assert kinds == {"closing"}, row.verdict_reasons
    engine.dispose()


def test_a_retried_photo_upload_is_stored_once(world: dict[str, Any]):
    """A phone on 4G retries an upload whose answer it missed: one photo, not two."""
    from ingest_server.models import Photo

    client = TestClient(
        create_app(
            ApiContext(
                world["settings"], world["factory"], world["store"], recompute=lambda i: None
            )
        )
    )
    url = "/api/v1/sessions/s1/photos/opening"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    photo = make_photo(taken_at=T0 + timedelta(hours=1), lat=31.2304, lon=121.4737, scene_seed=3)
    first = client.post(url, files={"file": ("a.jpg", photo)}, headers=auth)
    again = client.post(url, files={"file": ("a.jpg", photo)}, headers=auth)
    assert first.status_code == 201 and again.status_code in (200, 201)
    assert again.json()["id"] == first.json()["id"]
    with world["factory"]() as db:
        assert db.query(Photo).filter_by(session_id="s1").count() == 1


def test_no_verdict_names_a_window_before_the_scheduled_end_even_after_an_early_close(
    world: dict[str, Any],
):
    from ingest_server.verdicts import VerdictKeeper

    clock, factory = world["clock"], world["factory"]
    keeper = VerdictKeeper(factory, world["settings"], clock)
    start = T0 + timedelta(hours=1)
    with factory.begin() as db:
        row = db.get(ClassSession, "s1")
        row.opened_at, row.closed_at, row.state = start, start + timedelta(minutes=20), "closed"
        windows = db.query(SessionWindow).filter_by(session_id="s1").all()
        secrets = {w.start.isoformat() for w in windows} | {w.end.isoformat() for w in windows}
    clock.advance(3600 + 30 * 60)  # closed 20 min in; an hour of class time remains
    keeper.recompute({"s1"})
    with factory() as db:
        row = db.get(ClassSession, "s1")
        reasons = json.loads(row.verdict_reasons)
    assert row.verdict == "pending"
    assert [r["code"] for r in reasons] == ["session_in_progress"]
    assert not any(s in row.verdict_reasons for s in secrets)
    clock.advance(3600 + 60)  # past the scheduled end: now the facts may speak
    keeper.recompute({"s1"})
    with factory() as db:
        codes = {r["code"] for r in json.loads(db.get(ClassSession, "s1").verdict_reasons)}
    assert "session_in_progress" not in codes and codes


def test_a_clip_from_another_classrooms_camera_does_not_prove_the_window(world: dict[str, Any]):
    from ingest_server.facts import window_evidence
    from ingest_server.models import Clip, Device
    from ingest_server.rules.clip_proof import ProofOutcome, best_proof
    from ingest_server.sessions import link_clip

    factory, clock = world["factory"], world["clock"]
    with factory.begin() as db:
        db.add(
            Device(
                device_id="cam-2",
                public_key=public_key_b64(generate_private_key()),
                classroom_id="elsewhere",
                created_at=clock.now(),
                enabled=True,
            )
        )
        db.flush()
        window = db.query(SessionWindow).filter_by(session_id="s1", idx=0).one()
        for upload_id, device in (("u-stranger", "cam-2"), ("u-own", "cam-1")):
            stored_clip(
                db, device, upload_id, window.start, window.end, clock.now(), cmd_id=window.cmd_id
            )
    with factory.begin() as db:
        # Both are facts of s1 (its verdict is recomputed), and neither sets the window.
        stranger = db.query(Clip).filter_by(upload_id="u-stranger").one()
        assert link_clip(db, stranger) == "s1"
        own = db.query(Clip).filter_by(upload_id="u-own").one()
        assert link_clip(db, own) == "s1"
        window = db.query(SessionWindow).filter_by(session_id="s1", idx=0).one()
        assert window.upload_id is None
        evidence = window_evidence(db, window)
    assert {c.device_id for c in evidence.clips} == {"cam-1", "cam-2"}
    proof = best_proof(evidence.facts, evidence.clips, "cam-1")
    assert proof is not None and proof.clip.device_id == "cam-1"
    stranger_only = tuple(c for c in evidence.clips if c.device_id == "cam-2")
    proof = best_proof(evidence.facts, stranger_only, "cam-1")
    assert proof is not None and proof.outcome is ProofOutcome.FAILED
    assert [r.code.value for r in proof.reasons] == ["clip_wrong_device"]


def test_the_same_photo_in_another_session_is_reused_a_new_one_is_not(world: dict[str, Any]):
    from ingest_server.sessions import create_session
    from ingest_server.verdicts import VerdictKeeper

    factory, clock = world["factory"], world["clock"]
    with factory.begin() as db:
        create_session(
            db,
            world["settings"],
            session_id="s2",
            class_id="cls",
            classroom_id="room",
            lecturer_id="lect",
            start=T0 + timedelta(days=1),
            duration_s=3600,
        )
    client = TestClient(
        create_app(
            ApiContext(
                world["settings"], factory, world["store"], recompute=lambda ids: None, clock=clock
            )
        )
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = make_photo(taken_at=T0 + timedelta(hours=1), lat=31.2304, lon=121.4737, scene_seed=5)
    other = make_photo(taken_at=T0 + timedelta(days=1), lat=31.2304, lon=121.4737, scene_seed=6)
    for session, data in (("s1", first), ("s2", first), ("s2", other)):
        response = client.post(
            f"/api/v1/sessions/{session}/photos/opening",
            files={"file": ("p.jpg", data)},
            headers=auth,
        )
        assert response.status_code == 201, response.text
    keeper = VerdictKeeper(factory, world["settings"], clock)
    with factory() as db:
        evidence = keeper.facts.evidence(db, db.get(ClassSession, "s2"))
    reused = sorted((p.photo.photo_id, p.reused_from) for p in evidence.photos)
    assert [r for _, r in reused] == ["s1", None]


def test_windows_whose_upload_failed_are_asked_again_a_bounded_number_of_times(
    world: dict[str, Any],
):
    """A ``cut_done`` naming an upload still under way holds the requests back; once that
    upload is refused the window is asked for again while the camera may still hold it, but
    never more than ``window_max_requests`` times in all."""
    from common.schemas import Event, EventType
    from ingest_server.models import Upload
    from ingest_server.sessions import record_device_event

    clock, scheduler, factory = world["clock"], world["scheduler"], world["factory"]
    settings: Settings = world["settings"]
    fleet: DeviceMessages = world["fleet"]
    beats = iter(range(1, 1000))

    def tick_online() -> list[Command]:
        fleet.handle(UpTopic("cam-1", UpKind.HEARTBEAT), _heartbeat(clock, next(beats)))
        return _commands(scheduler.tick())

    clock.advance(timedelta(hours=2, minutes=30).total_seconds())
    clock.advance(settings.window_request_delay_s + 1)
    first = tick_online()
    assert len(first) == 3
    cut = first[0]
    with factory.begin() as db:
        stored_upload(db, "cam-1", "u-1", clock.now(), state="receiving")
        record_device_event(
            db,
            Event(
                event_id="done-1",
                device_id="cam-1",
                type=EventType.CUT_DONE,
                at=clock.now(),
                cmd_id=cut.cmd_id,
                session_id="s1",
                data={"upload_id": "u-1"},
            ),
        )
    clock.advance(settings.window_retry_s + 1)
    asked = {c.cmd_id for c in tick_online()}
    assert cut.cmd_id not in asked and len(asked) == 2  # the others are still unanswered
    with factory.begin() as db:
        upload = db.get(Upload, ("u-1", "cam-1"))
        assert upload is not None
        upload.state = "rejected"
    counts = {cut.cmd_id: 1}
    for _ in range(settings.window_max_requests + 3):
        clock.advance(settings.window_retry_s + 1)
        for command in tick_online():
            counts[command.cmd_id] = counts.get(command.cmd_id, 0) + 1
    assert counts[cut.cmd_id] == settings.window_max_requests


@pytest.mark.parametrize(
    "query",
    [
        "/api/v1/sessions?limit=-1",
        "/api/v1/sessions?limit=0",
        "/api/v1/feed?after=-1",
        f"/api/v1/feed?after={10**30}",
        "/api/v1/feed?limit=100000",
    ],
)
def test_query_parameters_out_of_bounds_are_422_not_500(world: dict[str, Any], query: str):
    client = TestClient(
        create_app(
            ApiContext(
                world["settings"], world["factory"], world["store"], recompute=lambda ids: None
            )
        ),
        raise_server_exceptions=False,
    )
    authorize(client)
    assert client.get(query).status_code == 422


def test_an_import_file_that_is_not_json_names_the_file_line(tmp_path: Path):
    broken = tmp_path / "setup.json"
    broken.write_text('{"institutions": [\n  {"id": "a"},\n  oops\n]}')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ImportFailed) as failed:
        read_rows(broken)
    (error,) = failed.value.errors
    assert error.line == 3 and "not JSON" in error.message
    with pytest.raises(ImportFailed):
        read_rows(deep)
