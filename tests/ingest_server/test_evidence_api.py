"""The evidence API (issue 10) on a real SQLite database and evidence store, with real H.264
clips (PyAV), real JPEGs from the photo API and real signed manifests: filters and keyset
paging, each role's scope (also when it filters on, or asks for, another institution's rows),
range requests on clip files, the audit of every view and download, the signature status of
a stored manifest, distances across datums, statistics with trainee-hours, the fleet and the
reviewed mark; paging and the mark again on PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from ingest_helpers import quiet_heartbeat
from sqlalchemy import select, text, true, update

from common.clock import VirtualClock
from common.geo import Coordinate, Datum, destination, distance_m, wgs84_to_gcj02
from common.schemas import ClipKind, Event, EventType, Manifest
from common.signing import (
    generate_private_key,
    parse_signed_manifest,
    public_key_b64,
    sign_manifest,
)
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.auth import Role, create_token
from ingest_server.db import make_engine, make_session_factory, migrate
from ingest_server.errors import StoreError
from ingest_server.evidence import (
    Reader,
    SessionFilter,
    mark_reviewed,
    reasons_view,
    reviewed_by,
    session_page,
    unmark_reviewed,
)
from ingest_server.models import (
    AuditEntry,
    ClassSession,
    Clip,
    ClipCheck,
    DeviceHealth,
    PresenceChange,
    SessionWindow,
    Upload,
)
from ingest_server.sessions import record_device_event
from ingest_server.settings import Settings
from ingest_server.setup_import import ImportFailed, import_rows, read_rows
from ingest_server.store import EvidenceStore, clip_path
from ingest_server.verdicts import VerdictKeeper
from simulators.clip_files import write_mp4
from simulators.phone import make_photo

# 01:00 in Shanghai on 30 October: days 0-1 fall in October there, days 2-6 in November
# (in UTC day 2 would still be October).
T0 = datetime(2026, 10, 29, 17, 0, tzinfo=UTC)
DAYS = 7
FPS = 2
NOW = T0 + timedelta(days=DAYS + 1)
ROOM_A1_WGS = Coordinate(31.2304, 121.4737)
APP = {"la1": "app-token-of-lecturer-a1-0", "la2": "app-token-of-lecturer-a2-0"}
APP["lb1"] = "app-token-of-lecturer-b1-0"


def school_doc(keys: dict[str, Ed25519PrivateKey]) -> dict[str, Any]:
    """Two schools: a with three classrooms side by side (room a1 given in GCJ-02, as a
    Chinese map picker gives it), b with one; each classroom holds a class at the same hour
    on seven days, so every start is shared by four sessions (ties for the paging)."""
    gcj = wgs84_to_gcj02(ROOM_A1_WGS)
    rooms = [
        ("a1", "school-a", gcj.lat, gcj.lon, "gcj02"),
        ("a2", "school-a", 31.3, 121.5, "wgs84"),
        ("a3", "school-a", 31.31, 121.5, "wgs84"),
        ("b1", "school-b", 32.0, 120.0, "wgs84"),
    ]
    doc: dict[str, Any] = {
        "institutions": [
            {"id": "school-a", "name": "甲职业培训学校"},
            {"id": "school-b", "name": "乙职业培训学校"},
        ],
        "classrooms": [
            {"id": f"room-{r}", "institution_id": i, "name": f"教室 {r}", "lat": lat, "lon": lon}
            | {"datum": datum}
            for r, i, lat, lon, datum in rooms
        ],
        "devices": [
            {"device_id": f"cam-{r}", "classroom_id": f"room-{r}", "public_key": public_key_b64(k)}
            for r, k in keys.items()
        ],
        "lecturers": [
            {
                "id": f"l{r}",
                "institution_id": i,
                "name": f"老师 {r}",
                "token": APP.get(f"l{r}", f"app-token-of-lecturer-{r}-0"),
            }
            for r, i, *_ in rooms
        ],
        "classes": [
            {"id": "cls-a", "institution_id": "school-a", "name": "电工", "trainees": 12},
            {"id": "cls-b", "institution_id": "school-b", "name": "焊工", "trainees": 30},
        ],
        "sessions": [
            {
                "id": f"s-{r}-{d}",
                "class_id": f"cls-{r[0]}",
                "classroom_id": f"room-{r}",
                "lecturer_id": f"l{r}",
                "start": (T0 + timedelta(days=d)).isoformat(),
                "duration_min": 90,
            }
            for d in range(DAYS)
            for r, *_ in rooms
        ],
    }
    return doc


@dataclass
class World:
    context: ApiContext
    keys: dict[str, Ed25519PrivateKey]
    tokens: dict[str, str]
    clips: dict[str, int]  # session id -> its first window's clip
    clip_bytes: dict[int, bytes]
    tmp: Path

    def client(self, who: str, **kwargs: Any) -> TestClient:
        return TestClient(
            create_app(self.context),
            headers={"Authorization": f"Bearer {self.tokens[who]}"},
            **kwargs,
        )

    def get(self, who: str, path: str, **kwargs: Any) -> Any:
        return self.client(who).get(path, **kwargs)


def store_clip(
    db: Any,
    store: EvidenceStore,
    key: Ed25519PrivateKey,
    tmp: Path,
    window: SessionWindow,
    device_id: str,
    seed: int,
) -> tuple[Clip, bytes]:
    """What the ingest writes for an honest clip of ``window``: a real H.264 MP4 in the store,
    its upload with the device-signed manifest as received, the clip and its finished check."""
    cut_start, cut_end = window.start - timedelta(seconds=1), window.end + timedelta(seconds=1)
    duration_s = (cut_end - cut_start).total_seconds()
    # The whole window at 2 frames a second, small: what the checker decodes fits the manifest.
    count = round(duration_s * FPS)
    rng = np.random.default_rng(seed)
    frames = (rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(count))
    source = write_mp4(tmp / f"clip-{seed}.mp4", frames, fps=FPS, bitrate=50_000)
    data = source.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    upload_id = f"up-{seed}"
    manifest = Manifest(
        upload_id=upload_id,
        device_id=device_id,
        session_id=window.session_id,
        cmd_id=window.cmd_id,
        requested_start=window.start,
        requested_end=window.end,
        cut_start=cut_start,
        cut_end=cut_end,
        size=len(data),
        sha256=sha,
        chunk_size=len(data),
        chunk_sha256=[sha],
        duration_s=duration_s,
        frames=count,
        width=64,
        height=48,
        created_at=window.end + timedelta(minutes=1),
    )
    relative = clip_path(device_id, upload_id, cut_start)
    store.put_bytes(relative, data)
    signed = sign_manifest(manifest, key).decode()
    db.add(
        Upload(
            upload_id=upload_id,
            device_id=device_id,
            manifest=signed,
            size=len(data),
            sha256=sha,
            chunk_size=len(data),
            state="complete",
            received_ranges=json.dumps([[0, len(data)]]),
            chunks_received=1,
            chunks_duplicate=0,
            created_at=window.end,
            updated_at=window.end,
        )
    )
    db.flush()
    clip = Clip(
        upload_id=upload_id,
        device_id=device_id,
        session_id=window.session_id,
        cmd_id=window.cmd_id,
        kind=ClipKind.CLIP.value,
        sha256=sha,
        size=len(data),
        path=relative,
        requested_start=window.start,
        requested_end=window.end,
        cut_start=cut_start,
        cut_end=cut_end,
        duration_s=duration_s,
        frames=count,
        width=64,
        height=48,
        codec="h264",
        stored_at=window.end + timedelta(minutes=2),
    )
    db.add(clip)
    db.flush()
    db.add(
        ClipCheck(
            clip_id=clip.id,
            black=False,
            frozen=False,
            moved=False,
            mean_luma=120.0,
            frozen_fraction=0.0,
            decoded_frames=count,
            decoded_duration_s=duration_s,
            frame_rate=float(FPS),
            attempts=1,
            checked_at=window.end + timedelta(minutes=3),
        )
    )
    return clip, data


def _first_window(db: Any, session_id: str) -> SessionWindow:
    return db.scalars(
        select(SessionWindow)
        .where(SessionWindow.session_id == session_id)
        .order_by(SessionWindow.idx)
    ).first()


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str) -> Iterator[World]:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    keys = {
        "a1": generate_private_key(),
        "a2": generate_private_key(),
        "b1": generate_private_key(),
    }
    (tmp_path / "setup.json").write_text(json.dumps(school_doc(keys)))
    store = EvidenceStore(settings.evidence_dir)
    clips: dict[str, int] = {}
    clip_bytes: dict[int, bytes] = {}
    with factory.begin() as db:
        import_rows(db, read_rows(tmp_path / "setup.json"), settings)
    with factory.begin() as db:
        # What the verdict keeper would have said: a1's classes verified, a2's rejected, a3's
        # pending, b1's verified.
        for room, verdict in (("a1", "verified"), ("a2", "rejected"), ("b1", "verified")):
            db.execute(
                update(ClassSession)
                .where(ClassSession.classroom_id == f"room-{room}")
                .values(verdict=verdict, verdict_at=NOW)
            )
        for n, (session_id, room) in enumerate((("s-a1-0", "a1"), ("s-b1-0", "b1"))):
            clip, data = store_clip(
                db, store, keys[room], tmp_path, _first_window(db, session_id), f"cam-{room}", n
            )
            clips[session_id], clip_bytes[clip.id] = clip.id, data
        for room in ("a1", "b1"):
            beat = quiet_heartbeat(
                f"cam-{room}", NOW, recording=True, clock_offset_s=2.5, disk_free_bytes=5_000_000
            ).model_dump(mode="json") | {"modem": {"rssi_dbm": -71, "operator": "CMCC"}}
            db.add(
                DeviceHealth(
                    device_id=f"cam-{room}",
                    status="online",
                    status_at=NOW,
                    last_heartbeat_at=NOW,
                    heartbeat=json.dumps(beat),
                )
            )
    clock = VirtualClock(start=NOW)
    context = ApiContext(settings, factory, store, recompute=lambda ids: None, clock=clock)
    tokens = dict(APP)
    with factory.begin() as db:
        for who, role, scope in (
            ("admin", Role.ADMIN, {}),
            ("supervisor", Role.SUPERVISOR, {}),
            ("inst-a", Role.INSTITUTION, {"institution_id": "school-a"}),
            ("inst-b", Role.INSTITUTION, {"institution_id": "school-b"}),
        ):
            _, tokens[who] = create_token(db, role, NOW, name=who, **scope)
    yield World(context, keys, tokens, clips, clip_bytes, tmp_path)
    engine.dispose()


def all_ids(world: World, who: str, limit: int, **params: Any) -> list[str]:
    """Every session of the list, page after page of ``limit``."""
    out: list[str] = []
    after = None
    for _ in range(100):
        query = params | {"limit": limit} | ({"after": after} if after else {})
        page = world.get(who, "/api/v1/sessions", params=query)
        assert page.status_code == 200, page.text
        out += [s["id"] for s in page.json()["sessions"]]
        after = page.json()["next"]
        if after is None:
            return out
    raise AssertionError("the pages did not end")


def expected_order(session_ids: list[str]) -> list[str]:
    """Newest scheduled start first, ties by id (greater first)."""
    day = {sid: int(sid.rsplit("-", 1)[1]) for sid in session_ids}
    return sorted(session_ids, key=lambda sid: (day[sid], sid), reverse=True)


ROOMS = ("a1", "a2", "a3", "b1")
EVERY = [f"s-{r}-{d}" for d in range(DAYS) for r in ROOMS]


# -- Listing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 4, 5, 500])
def test_pages_hold_every_session_once_in_order_across_ties(world: World, limit: int):
    assert all_ids(world, "admin", limit) == expected_order(EVERY)


def test_a_session_added_while_paging_moves_nothing_already_paged(world: World):
    first = world.get("admin", "/api/v1/sessions", params={"limit": 6}).json()
    doc = json.loads((world.tmp / "setup.json").read_text())
    newest = {
        **doc["sessions"][0],
        "id": "s-a1-new",
        "start": (T0 + timedelta(days=DAYS)).isoformat(),
    }
    (world.tmp / "more.json").write_text(json.dumps({"sessions": [newest]}))
    with world.context.session_factory.begin() as db:
        import_rows(db, read_rows(world.tmp / "more.json"), world.context.settings)
    rest: list[str] = []
    after = first["next"]
    while after:
        page = world.get("admin", "/api/v1/sessions", params={"limit": 6, "after": after}).json()
        rest += [s["id"] for s in page["sessions"]]
        after = page["next"]
    assert [s["id"] for s in first["sessions"]] + rest == expected_order(EVERY)


def test_filters_narrow_the_list(world: World):
    a_days = [f"s-{r}-{d}" for d in range(DAYS) for r in ("a1", "a2", "a3")]
    assert all_ids(world, "admin", 4, institution="school-a") == expected_order(a_days)
    assert all_ids(world, "admin", 4, classroom="room-a2") == expected_order(
        [f"s-a2-{d}" for d in range(DAYS)]
    )
    assert all_ids(world, "admin", 4, lecturer="la3") == expected_order(
        [f"s-a3-{d}" for d in range(DAYS)]
    )
    assert all_ids(world, "admin", 4, verdict="rejected") == expected_order(
        [f"s-a2-{d}" for d in range(DAYS)]
    )
    # start included, end not, on the scheduled start.
    window = {
        "start": (T0 + timedelta(days=2)).isoformat(),
        "end": (T0 + timedelta(days=4)).isoformat(),
    }
    assert all_ids(world, "admin", 3, **window) == expected_order(
        [f"s-{r}-{d}" for d in (2, 3) for r in ROOMS]
    )
    both = all_ids(world, "admin", 2, verdict="verified", institution="school-b", **window)
    assert both == ["s-b1-3", "s-b1-2"]


def test_a_summary_names_who_where_when_and_why(world: World):
    page = world.get("admin", "/api/v1/sessions", params={"classroom": "room-a2", "limit": 1})
    summary = page.json()["sessions"][0]
    assert summary["id"] == "s-a2-6"
    assert summary["class"] == {"id": "cls-a", "name": "电工"}
    assert summary["classroom"] == {"id": "room-a2", "name": "教室 a2"}
    assert summary["institution"] == {"id": "school-a", "name": "甲职业培训学校"}
    assert summary["lecturer"] == {"id": "la2", "name": "老师 a2"}
    assert summary["scheduled_start"] == (T0 + timedelta(days=6)).isoformat()
    assert summary["scheduled_end"] == (T0 + timedelta(days=6, minutes=90)).isoformat()
    assert summary["verdict"]["state"] == "rejected" and summary["reviewed"] is False


@pytest.mark.parametrize(
    "query",
    [
        {"after": "not-a-cursor"},
        {"after": "W10"},  # base64 of "[]"
        {"after": "x" * 600},
        {"verdict": "maybe"},
        {"limit": 0},
        {"limit": 501},
        {"institution": ""},
        {"classroom": "r" * 65},
    ],
)
def test_bad_list_parameters_are_422(world: World, query: dict[str, Any]):
    response = world.client("admin", raise_server_exceptions=False).get(
        "/api/v1/sessions", params=query
    )
    assert response.status_code == 422, response.text


def test_a_list_is_audited_once_per_request(world: World):
    with world.context.session_factory() as db:
        before = db.scalar(text("SELECT count(*) FROM audit_log"))
    ids = all_ids(world, "inst-a", 10, verdict="verified")
    with world.context.session_factory() as db:
        rows = db.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()[before:]
    assert [(r.action, r.subject_type, r.actor.split("#")[0]) for r in rows] == [
        ("viewed", "sessions", "institution:inst-a")
    ]
    details = json.loads(rows[0].details)
    assert details["ids"] == ids and details["query"]["verdict"] == "verified"


@pytest.mark.parametrize(
    ("route", "subject"),
    [("/api/v1/devices", "GET /devices"), ("/api/v1/statistics", "GET /statistics")],
)
def test_the_fleet_and_the_statistics_are_audited_once_per_request(
    world: World, route: str, subject: str
):
    with world.context.session_factory() as db:
        before = db.scalar(text("SELECT count(*) FROM audit_log"))
    assert world.get("inst-a", route).status_code == 200
    with world.context.session_factory() as db:
        rows = db.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()[before:]
    assert [(r.action, r.subject_type, r.subject_id, r.actor.split("#")[0]) for r in rows] == [
        ("viewed", "overview", subject, "institution:inst-a")
    ]


# -- Scope ------------------------------------------------------------------------------------


def test_an_institution_sees_only_its_own_sessions_even_when_it_filters_on_others(world: World):
    mine = [f"s-{r}-{d}" for d in range(DAYS) for r in ("a1", "a2", "a3")]
    assert all_ids(world, "inst-a", 5) == expected_order(mine)
    for other in ({"institution": "school-b"}, {"classroom": "room-b1"}, {"lecturer": "lb1"}):
        page = world.get("inst-a", "/api/v1/sessions", params=other)
        assert page.json() == {"sessions": [], "next": None}, other
    assert all_ids(world, "inst-b", 3) == expected_order([f"s-b1-{d}" for d in range(DAYS)])
    assert world.get("inst-a", "/api/v1/sessions/s-b1-0").status_code == 403


def test_a_lecturer_sees_own_sessions_but_no_statistics_and_no_review(world: World):
    assert all_ids(world, "la1", 2) == expected_order([f"s-a1-{d}" for d in range(DAYS)])
    assert world.get("la1", "/api/v1/sessions", params={"lecturer": "la2"}).json()["sessions"] == []
    assert world.get("la1", "/api/v1/statistics").status_code == 403
    assert world.client("la1").put("/api/v1/sessions/s-a1-0/review").status_code == 403
    assert world.client("la1").delete("/api/v1/sessions/s-a1-0/review").status_code == 403
    assert world.get("la1", "/api/v1/devices").status_code == 403
    # Its own session's clip, not another lecturer's.
    assert world.get("la1", f"/api/v1/clips/{world.clips['s-a1-0']}/video").status_code == 200
    assert world.get("la2", f"/api/v1/clips/{world.clips['s-a1-0']}/video").status_code == 403


@pytest.mark.parametrize("route", ["video", "manifest"])
def test_another_institutions_clip_is_refused(world: World, route: str):
    theirs, mine = world.clips["s-b1-0"], world.clips["s-a1-0"]
    refused = world.get("inst-a", f"/api/v1/clips/{theirs}/{route}")
    assert refused.status_code == 403
    assert world.clip_bytes[theirs][:64] not in refused.content
    assert "manifest" not in refused.json() and "up-1" not in refused.text
    assert world.get("inst-a", f"/api/v1/clips/{mine}/{route}").status_code == 200
    assert world.get("inst-b", f"/api/v1/clips/{theirs}/{route}").status_code == 200
    assert world.get("inst-a", f"/api/v1/clips/987654/{route}").status_code == 404
    bad = world.client("inst-a", raise_server_exceptions=False)
    for forged in ("0", "-1", "1.5", "..%2F..%2Fetc", str(2**64)):
        assert bad.get(f"/api/v1/clips/{forged}/{route}").status_code in (404, 422), forged


def test_a_clip_without_a_session_is_its_devices_classrooms(world: World):
    with world.context.session_factory.begin() as db:
        clip = db.get(Clip, world.clips["s-b1-0"])
        assert clip is not None
        clip.session_id, clip.cmd_id = None, None
    clip_id = world.clips["s-b1-0"]
    assert world.get("inst-b", f"/api/v1/clips/{clip_id}/video").status_code == 200
    assert world.get("inst-a", f"/api/v1/clips/{clip_id}/video").status_code == 403
    assert world.get("lb1", f"/api/v1/clips/{clip_id}/video").status_code == 403


def test_a_stored_path_that_leaves_the_store_is_404_not_a_file(world: World):
    with world.context.session_factory.begin() as db:
        clip = db.get(Clip, world.clips["s-a1-0"])
        assert clip is not None
        clip.path = "../../../../etc/passwd"
    response = world.get("admin", f"/api/v1/clips/{world.clips['s-a1-0']}/video")
    assert response.status_code == 404 and b"root:" not in response.content


def test_devices_and_statistics_are_scoped(world: World):
    devices = world.get("inst-a", "/api/v1/devices").json()
    assert [d["device_id"] for d in devices] == ["cam-a1", "cam-a2"]
    assert "CMCC" in json.dumps(devices) and "cam-b1" not in json.dumps(devices)
    a1 = devices[0]
    assert a1["online"] is True and a1["recording"] is True
    assert a1["signal"]["rssi_dbm"] == -71 and a1["disk"]["free_bytes"] == 5_000_000
    assert a1["clock_skew_s"] == 2.5 and a1["classroom"] == {"id": "room-a1", "name": "教室 a1"}
    assert devices[1]["online"] is False and devices[1]["last_heartbeat_at"] is None
    stats = world.get("inst-a", "/api/v1/statistics").json()
    assert [i["id"] for i in stats["by_institution"]] == ["school-a"]
    assert {c["id"] for c in stats["by_classroom"]} == {"room-a1", "room-a2", "room-a3"}


# -- Statistics -------------------------------------------------------------------------------


def test_statistics_count_verdicts_by_month_in_the_zone_and_trainee_hours(world: World):
    stats = world.get("admin", "/api/v1/statistics").json()
    assert stats["timezone"] == "Asia/Shanghai"
    # 12 trainees x 1.5 h x 7 verified sessions in a1; 30 x 1.5 x 7 in b1.
    assert stats["total"] == {
        "sessions": 28,
        "verified": 14,
        "rejected": 7,
        "pending": 7,
        "verified_trainee_hours": 126.0 + 315.0,
    }
    months = {m["month"]: m for m in stats["by_month"]}
    # Days 0-1 are October in Shanghai, days 2-6 November (in UTC day 2 is still October).
    assert (months["2026-10"]["sessions"], months["2026-11"]["sessions"]) == (8, 20)
    assert months["2026-10"]["verified_trainee_hours"] == 2 * (18.0 + 45.0)
    school = {i["id"]: i for i in stats["by_institution"]}
    assert school["school-a"]["verified_trainee_hours"] == 126.0
    assert school["school-b"]["verified_trainee_hours"] == 315.0
    room = {c["id"]: c for c in stats["by_classroom"]}
    assert room["room-a2"] | {"name": None} == {
        "id": "room-a2",
        "name": None,
        "institution_id": "school-a",
        "sessions": 7,
        "verified": 0,
        "rejected": 7,
        "pending": 0,
        "verified_trainee_hours": 0.0,
    }
    bounded = world.get(
        "inst-b",
        "/api/v1/statistics",
        params={"start": (T0 + timedelta(days=5)).isoformat(), "end": NOW.isoformat()},
    ).json()
    assert bounded["total"]["sessions"] == 2 and bounded["total"]["verified_trainee_hours"] == 90.0


@pytest.mark.parametrize("trainees", [-1, 10_001, "many", 1.5])
def test_the_setup_file_refuses_impossible_trainees(world: World, trainees: Any):
    (world.tmp / "bad.json").write_text(
        json.dumps(
            {
                "classes": [
                    {"id": "c", "institution_id": "school-a", "name": "x", "trainees": trainees}
                ]
            }
        )
    )
    with pytest.raises(ImportFailed) as failed, world.context.session_factory.begin() as db:
        import_rows(db, read_rows(world.tmp / "bad.json"), world.context.settings)
    assert failed.value.errors[0].field == "trainees"


# -- One session's evidence -------------------------------------------------------------------


def _post_photo(
    world: World, session_id: str, kind: str, at: datetime, where: Coordinate
) -> dict[str, Any]:
    photo = make_photo(
        taken_at=at, lat=where.lat, lon=where.lon, scene_seed=hash(kind) % 50 + 3, size=(320, 240)
    )
    response = world.client("la1").post(
        f"/api/v1/sessions/{session_id}/photos/{kind}",
        files={"file": (f"{kind}.jpg", photo, "image/jpeg")},
    )
    assert response.status_code == 201, response.text
    return response.json() | {"bytes": photo}


def test_a_sessions_evidence_whole(world: World):
    start = T0
    # The opening photo 150 m east of room a1 (stored in GCJ-02, the photo's EXIF in WGS-84).
    away = destination(ROOM_A1_WGS, 150.0, 90.0)
    opening = _post_photo(world, "s-a1-0", "opening", start, away)
    closing = _post_photo(world, "s-a1-0", "closing", start + timedelta(minutes=90), ROOM_A1_WGS)
    with world.context.session_factory.begin() as db:
        for n, (kind, at, data) in enumerate(
            [
                (EventType.SESSION_STARTED, start, {}),
                (
                    EventType.RECORDING_GAP,
                    start + timedelta(minutes=10),
                    {
                        "start": (start + timedelta(minutes=20, seconds=3)).isoformat(),
                        "end": (start + timedelta(minutes=21, seconds=3)).isoformat(),
                        "reason": "frames_late",
                    },
                ),
                (EventType.SESSION_STOPPED, start + timedelta(minutes=90), {"recorded_s": 5340.0}),
            ]
        ):
            # The camera's clock runs 3 s ahead: its gap is mapped back to server time.
            event = Event(
                event_id=f"ev-{n}",
                device_id="cam-a1",
                type=kind,
                at=at + timedelta(seconds=3),
                clock_offset_s=3.0,
                session_id="s-a1-0",
                data=data,
            )
            record_device_event(db, event, NOW)
        db.add(
            PresenceChange(
                device_id="cam-a1", at=start + timedelta(minutes=30), online=False, source="status"
            )
        )
        db.add(
            PresenceChange(
                device_id="cam-a1", at=start + timedelta(minutes=34), online=True, source="status"
            )
        )
        db.add(
            PresenceChange(
                device_id="cam-a1", at=start - timedelta(days=1), online=False, source="status"
            )
        )
        db.add(
            PresenceChange(
                device_id="cam-a1", at=start - timedelta(hours=20), online=True, source="status"
            )
        )
    VerdictKeeper(
        world.context.session_factory, world.context.settings, world.context.clock
    ).recompute({"s-a1-0"})

    view = world.get("inst-a", "/api/v1/sessions/s-a1-0").json()
    assert view["session"]["institution"]["name"] == "甲职业培训学校"
    assert view["session"]["device_id"] == "cam-a1" and view["opened_at"] is not None
    room = view["classroom"]
    assert room["datum"] == "gcj02" and room["institution_id"] == "school-a"
    photos = {p["kind"]: p for p in view["photos"]}
    # 150 m after converting the classroom out of GCJ-02; in raw degrees it would read ~500 m.
    assert photos["opening"]["distance_m"] == pytest.approx(150.0, abs=1.0)
    raw = distance_m(away, Coordinate(room["lat"], room["lon"], Datum.WGS84))
    assert raw > 300
    assert photos["opening"]["within_radius"] is False
    assert photos["closing"]["distance_m"] < 1.0 and photos["closing"]["within_radius"] is True
    assert photos["opening"]["sha256"] == hashlib.sha256(opening["bytes"]).hexdigest()
    assert photos["closing"]["id"] == closing["id"] and photos["opening"]["time_source"] == "exif"
    # Windows: all three shown (the session is over); the first with its clip.
    assert len(view["windows"]) == view["windows_total"] == 3
    clip = view["windows"][0]["clip"]
    assert clip["id"] == world.clips["s-a1-0"] and clip["signature"] == "valid"
    assert clip["sha256"] == hashlib.sha256(world.clip_bytes[clip["id"]]).hexdigest()
    assert clip["size"] == len(world.clip_bytes[clip["id"]]) and clip["proof"] == "proven"
    assert clip["check"]["black"] is False and clip["content_type"] == "video/mp4"
    assert [w["clip"] for w in view["windows"][1:]] == [None, None]
    # The verdict in zh-CN with its history from the feed.
    verdict = view["verdict"]
    assert verdict["state"] in ("pending", "rejected") and verdict["reasons"]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in verdict["reasons"][0]["text"])
    assert verdict["history"] and verdict["history"][-1]["state"] == verdict["state"]
    assert "photo_out_of_range" in {r["code"] for r in verdict["reasons"]}
    # The timeline: the gap in server time, the offline period within the session only.
    timeline = view["timeline"]
    assert timeline["gaps"] == [
        {
            "start": (start + timedelta(minutes=20)).isoformat(),
            "end": (start + timedelta(minutes=21)).isoformat(),
        }
    ]
    assert timeline["offline"] == [
        {
            "start": (start + timedelta(minutes=30)).isoformat(),
            "end": (start + timedelta(minutes=34)).isoformat(),
        }
    ]
    assert [w["index"] for w in timeline["windows"]] == [0, 1, 2]
    english = world.get("inst-a", "/api/v1/sessions/s-a1-0", params={"lang": "en"}).json()
    assert english["verdict"]["reasons"][0]["text"].isascii()
    header = world.get("inst-a", "/api/v1/sessions/s-a1-0", headers={"Accept-Language": "en-US"})
    assert header.json()["language"] == "en"


def test_windows_stay_hidden_until_the_session_is_over(world: World):
    world.context.clock = VirtualClock(start=T0 + timedelta(days=6, minutes=89))
    view = world.get("admin", "/api/v1/sessions/s-a1-6").json()
    assert (
        view["windows"] == [] and view["timeline"]["windows"] == [] and view["windows_total"] == 3
    )


def test_a_tampered_stored_manifest_reads_invalid(world: World):
    clip_id = world.clips["s-a1-0"]
    answer = world.get("inst-a", f"/api/v1/clips/{clip_id}/manifest").json()
    assert answer["signature"] == "valid"
    # The manifest is what the device signed, byte for byte: it verifies offline.
    parse_signed_manifest(answer["manifest"].encode()).verify(answer["public_key"])
    with world.context.session_factory.begin() as db:
        upload = db.get(Upload, ("up-0", "cam-a1"))
        assert upload is not None
        body = json.loads(upload.manifest)
        body["cut_start"] = (T0 - timedelta(days=1)).isoformat()  # one field changed
        upload.manifest = json.dumps(body)
    assert world.get("inst-a", f"/api/v1/clips/{clip_id}/manifest").json()["signature"] == "invalid"
    view = world.get("inst-a", "/api/v1/sessions/s-a1-0").json()
    assert view["windows"][0]["clip"]["signature"] == "invalid"


def test_a_manifest_signed_by_another_key_reads_invalid(world: World):
    with world.context.session_factory.begin() as db:
        upload = db.get(Upload, ("up-0", "cam-a1"))
        assert upload is not None
        manifest = parse_signed_manifest(upload.manifest.encode()).manifest
        upload.manifest = sign_manifest(manifest, world.keys["b1"]).decode()
    answer = world.get("admin", f"/api/v1/clips/{world.clips['s-a1-0']}/manifest").json()
    assert answer["signature"] == "invalid"


# -- Files: ranges, ETag, audit ---------------------------------------------------------------


def _downloads(world: World, subject_type: str) -> list[AuditEntry]:
    with world.context.session_factory() as db:
        return list(
            db.scalars(
                select(AuditEntry)
                .where(AuditEntry.subject_type == subject_type, AuditEntry.action == "viewed")
                .order_by(AuditEntry.seq)
            )
        )


def test_clip_video_answers_ranges_with_the_exact_bytes(world: World):
    clip_id = world.clips["s-a1-0"]
    data = world.clip_bytes[clip_id]
    size = len(data)
    url = f"/api/v1/clips/{clip_id}/video"
    client = world.client("inst-a")
    etag = f'"{hashlib.sha256(data).hexdigest()}"'

    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["etag"] == etag
    assert data[4:8] == b"ftyp"  # a real MP4

    first = client.get(url, headers={"Range": "bytes=0-99"})
    assert first.status_code == 206 and first.content == data[:100]
    assert first.headers["content-range"] == f"bytes 0-99/{size}"
    assert first.headers["etag"] == etag
    suffix = client.get(url, headers={"Range": "bytes=-100"})
    assert suffix.status_code == 206 and suffix.content == data[-100:]
    assert suffix.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
    open_end = client.get(url, headers={"Range": "bytes=100-"})
    assert open_end.status_code == 206 and open_end.content == data[100:]
    past_end = client.get(url, headers={"Range": "bytes=5000-999999999"})
    assert past_end.status_code == 206 and past_end.content == data[5000:]
    for unsatisfiable in (f"bytes={size}-", "bytes=99999999999999999999-", "bytes=-0"):
        refused = client.get(url, headers={"Range": unsatisfiable})
        assert refused.status_code == 416, unsatisfiable
        assert refused.headers["content-range"] == f"bytes */{size}"
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    # If-Range with another ETag: the whole file, not a piece of a changed one.
    stale = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data


def test_a_file_is_logged_once_per_viewing_not_per_range(world: World):
    clip_id = world.clips["s-a1-0"]
    url = f"/api/v1/clips/{clip_id}/video"
    client = world.client("inst-a")
    assert client.get(url, headers={"Range": "bytes=0-"}).status_code == 206
    for start in (1000, 2000, 3000):
        assert client.get(url, headers={"Range": f"bytes={start}-"}).status_code == 206
    rows = _downloads(world, "clip")
    assert len(rows) == 1
    details = json.loads(rows[0].details)
    assert rows[0].subject_id == str(clip_id) and rows[0].actor.startswith("institution:inst-a")
    assert details["route"] == "GET /clips/{id}/video" and details["download"] is True
    assert details["session_id"] == "s-a1-0"
    # Starting the file again is another viewing; a range not from byte 0 by someone who has
    # not viewed it yet is logged too (skipping byte 0 does not dodge the log).
    assert client.get(url).status_code == 200
    assert world.client("supervisor").get(url, headers={"Range": "bytes=10-"}).status_code == 206
    rows = _downloads(world, "clip")
    assert [r.actor.split("#")[0] for r in rows] == [
        "institution:inst-a",
        "institution:inst-a",
        "supervisor:supervisor",
    ]
    # A refused request is no view.
    world.get("inst-b", url)
    assert len(_downloads(world, "clip")) == 3
    world.get("inst-a", f"/api/v1/clips/{clip_id}/manifest")
    assert json.loads(_downloads(world, "clip")[-1].details)["route"] == "GET /clips/{id}/manifest"


def test_a_photo_image_is_the_stored_jpeg_scoped_and_logged(world: World):
    posted = _post_photo(world, "s-a1-0", "opening", T0, ROOM_A1_WGS)
    url = f"/api/v1/photos/{posted['id']}/image"
    image = world.get("inst-a", url)
    assert image.status_code == 200 and image.content == posted["bytes"]
    assert image.headers["content-type"] == "image/jpeg"
    assert image.headers["etag"] == f'"{hashlib.sha256(posted["bytes"]).hexdigest()}"'
    assert image.content[:2] == b"\xff\xd8"
    assert world.get("inst-b", url).status_code == 403
    assert world.get("la2", url).status_code == 403
    assert world.get("la1", url).status_code == 200
    assert world.get("inst-a", "/api/v1/photos/424242/image").status_code == 404
    rows = _downloads(world, "photo")
    assert [r.actor.split("#")[0] for r in rows] == ["institution:inst-a", "lecturer:app:la1"]
    assert all(r.subject_id == str(posted["id"]) for r in rows)


def test_a_session_view_is_logged(world: World):
    before = len(_downloads(world, "session"))
    world.get("supervisor", "/api/v1/sessions/s-b1-0")
    rows = _downloads(world, "session")
    assert len(rows) == before + 1 and rows[-1].subject_id == "s-b1-0"


# -- The reviewed mark ------------------------------------------------------------------------


def test_the_reviewed_mark_is_each_reviewers_own(world: World):
    first = world.client("inst-a").put("/api/v1/sessions/s-a2-3/review").json()
    # The token's mark, named as the audit log names it (one token is one person).
    assert first["reviewed"] is True and first["reviewer"].startswith("institution:inst-a#token")
    world.context.clock.advance(60)
    again = world.client("inst-a").put("/api/v1/sessions/s-a2-3/review").json()
    assert again["reviewed_at"] == first["reviewed_at"]  # marking twice keeps the first time

    def marked(who: str) -> set[str]:
        page = world.get(who, "/api/v1/sessions", params={"classroom": "room-a2"}).json()
        return {s["id"] for s in page["sessions"] if s["reviewed"]}

    assert marked("inst-a") == {"s-a2-3"}
    assert marked("supervisor") == set()  # another reviewer's mark is not theirs
    assert world.get("inst-a", "/api/v1/sessions/s-a2-3").json()["reviewed"] is True
    assert world.client("inst-b").put("/api/v1/sessions/s-a2-3/review").status_code == 403
    cleared = world.client("inst-a").delete("/api/v1/sessions/s-a2-3/review").json()
    assert cleared["reviewed"] is False and marked("inst-a") == set()
    assert world.client("inst-a").delete("/api/v1/sessions/s-a2-3/review").status_code == 200


# -- PostgreSQL -------------------------------------------------------------------------------


def test_paging_and_marks_on_postgresql(pg_url: str, tmp_path: Path):
    migrate(pg_url)
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    engine = make_engine(pg_url)
    factory = make_session_factory(engine)
    try:
        keys = {r: generate_private_key() for r in ("a1", "a2", "b1")}
        (tmp_path / "setup.json").write_text(json.dumps(school_doc(keys)))
        with factory.begin() as db:
            import_rows(db, read_rows(tmp_path / "setup.json"), settings)
        paged: list[str] = []
        after = None
        with factory() as db:
            while True:
                page = session_page(db, true(), SessionFilter(), after=after, limit=3)
                paged += [row.id for row in page.sessions]
                if page.next is None:
                    break
                after = page.next
        assert paged == expected_order(EVERY)
        with factory.begin() as db:
            mark_reviewed(db, "s-a1-0", "admin:x", NOW)
            mark_reviewed(db, "s-a1-0", "admin:x", NOW + timedelta(hours=1))
            mark_reviewed(db, "s-a2-0", "admin:y", NOW)
        with factory.begin() as db:
            assert reviewed_by(db, "admin:x", ["s-a1-0", "s-a2-0"]) == {"s-a1-0"}
            unmark_reviewed(db, "s-a1-0", "admin:x")
        with factory() as db:
            assert reviewed_by(db, "admin:x", ["s-a1-0"]) == set()
    finally:
        engine.dispose()


def test_a_snapshot_is_served_as_a_jpeg_and_a_folder_is_no_file(world: World):
    still = make_photo(taken_at=None, lat=None, lon=None, scene_seed=9, size=(320, 240))
    relative = clip_path("cam-a1", "snap-1", NOW, "image/jpeg")
    world.context.store.put_bytes(relative, still)
    with world.context.session_factory.begin() as db:
        clip = db.get(Clip, world.clips["s-a1-0"])
        assert clip is not None
        clip.kind, clip.path = ClipKind.SNAPSHOT.value, relative
    url = f"/api/v1/clips/{world.clips['s-a1-0']}/video"
    image = world.get("inst-a", url)
    assert image.status_code == 200 and image.content == still
    assert image.headers["content-type"] == "image/jpeg"
    with world.context.session_factory.begin() as db:
        clip = db.get(Clip, world.clips["s-a1-0"])
        assert clip is not None
        clip.path = "clips/cam-a1"  # a folder of the store
    assert world.client("admin", raise_server_exceptions=False).get(url).status_code == 404


class UnreachableStore(EvidenceStore):
    """A store whose bucket cannot be read now (as the S3 store says when it cannot fetch)."""

    def path_of(self, relative: str) -> Path:
        raise StoreError(f"cannot reach the bucket for {relative}")


def test_a_store_that_cannot_serve_now_is_503_not_a_crash(world: World):
    world.context.store = UnreachableStore(world.context.settings.evidence_dir)
    client = world.client("inst-a", raise_server_exceptions=False)
    response = client.get(f"/api/v1/clips/{world.clips['s-a1-0']}/video")
    assert response.status_code == 503 and "evidence store" in response.json()["detail"]
    assert _downloads(world, "clip") == []  # nothing was sent: no download logged


BLIND_REUSE_ZH = "开课照片与您查看范围之外的另一课程先前收到的照片相同或几乎相同"
BLIND_REUSE_EN = (
    "The opening photo is the same, or nearly the same, as a photo received earlier for another"
    " session, outside what you may see"
)
OTHER_SCHOOL = ("other_session", "other_photo", "other_received_at")


def _reused(reasons: list[dict[str, Any]]) -> dict[str, Any]:
    found = [r for r in reasons if r["code"] == "photo_reused"]
    assert len(found) == 1, reasons
    return found[0]


def test_a_photo_reused_from_another_school_is_shown_blind_to_the_school(world: World):
    """School B reposts school A's photo: the verdict rejects it with ``photo_reused``, but
    school B is never shown school A's session id, photo id or receive time — not in the
    evidence, the list, the dashboard page, its evidence.json or the export; admin is."""
    photo = make_photo(
        taken_at=T0, lat=ROOM_A1_WGS.lat, lon=ROOM_A1_WGS.lon, scene_seed=7, size=(320, 240)
    )
    posted = {}
    for who, session_id in (("la1", "s-a1-0"), ("lb1", "s-b1-0")):
        response = world.client(who).post(
            f"/api/v1/sessions/{session_id}/photos/opening",
            files={"file": ("o.jpg", photo, "image/jpeg")},
        )
        assert response.status_code == 201, response.text
        posted[session_id] = response.json()
        assert "s-a1-0" not in response.text or who == "la1"
    context = world.context
    VerdictKeeper(context.session_factory, context.settings, context.clock).recompute(
        {"s-a1-0", "s-b1-0"}
    )
    a_photo = str(posted["s-a1-0"]["id"])
    # Stored as judged: the row and the feed keep every param; the verdict is the rule's.
    with context.session_factory() as db:
        row = db.get(ClassSession, "s-b1-0")
        assert row is not None and row.verdict == "rejected"
        stored = _reused(json.loads(row.verdict_reasons))
    assert stored["params"]["other_session"] == "s-a1-0"
    assert stored["params"]["other_photo"] == a_photo

    # The API evidence, its history, and the list, for school B.
    view = world.get("inst-b", "/api/v1/sessions/s-b1-0").json()
    assert view["verdict"]["state"] == "rejected"
    for reasons in [view["verdict"]["reasons"]] + [
        h["reasons"] for h in view["verdict"]["history"]
    ]:
        if any(r["code"] == "photo_reused" for r in reasons):
            blind = _reused(reasons)
            assert blind["severity"] == "hard" and blind["text"] == BLIND_REUSE_ZH
            assert not set(OTHER_SCHOOL) & blind["params"].keys()
            assert blind["params"]["kind"] == "opening"
    assert "s-a1-0" not in json.dumps(view, ensure_ascii=False)
    english = world.get("inst-b", "/api/v1/sessions/s-b1-0?lang=en").json()
    assert _reused(english["verdict"]["reasons"])["text"] == BLIND_REUSE_EN
    listed = world.get("inst-b", "/api/v1/sessions").json()["sessions"]
    summary = next(s for s in listed if s["id"] == "s-b1-0")
    assert _reused(summary["verdict"]["reasons"])["text"] == BLIND_REUSE_ZH
    assert "s-a1-0" not in json.dumps(listed, ensure_ascii=False)
    # The lecturer of B sees the same.
    lecturer_view = world.get("lb1", "/api/v1/sessions/s-b1-0")
    assert lecturer_view.status_code == 200 and "s-a1-0" not in lecturer_view.text

    # The dashboard: the session page, its evidence.json and the queue.
    for path in ("/ui/sessions/s-b1-0", "/ui/sessions/s-b1-0/evidence.json", "/ui/queue"):
        page = world.get("inst-b", path)
        assert page.status_code == 200, (path, page.text[:300])
        # (Its receive time is the test clock's now, which the page shows anyway.)
        assert "s-a1-0" not in page.text and f">{a_photo}<" not in page.text, path
    assert BLIND_REUSE_ZH in world.get("inst-b", "/ui/sessions/s-b1-0").text

    # The export school B makes of its session.
    export = world.get("inst-b", "/api/v1/sessions/s-b1-0/export")
    assert export.status_code == 200, export.text[:300]
    with zipfile.ZipFile(io.BytesIO(export.content)) as archive:
        shown = json.loads(archive.read("sessions/s-b1-0.json"))
        assert not [n for n in archive.namelist() if b"s-a1-0" in archive.read(n)]
    blind = _reused(shown["verdict"]["reasons"])
    assert blind["text"] == BLIND_REUSE_ZH and not set(OTHER_SCHOOL) & blind["params"].keys()

    # Whoever reads everything is shown every param, in the API, the page and the export.
    full = _reused(world.get("admin", "/api/v1/sessions/s-b1-0").json()["verdict"]["reasons"])
    assert full["params"]["other_session"] == "s-a1-0"
    assert full["params"]["other_photo"] == a_photo
    assert "s-a1-0" in full["text"]
    assert "s-a1-0" in world.get("supervisor", "/ui/sessions/s-b1-0").text
    with zipfile.ZipFile(
        io.BytesIO(world.get("admin", "/api/v1/sessions/s-b1-0/export").content)
    ) as archive:
        shown = json.loads(archive.read("sessions/s-b1-0.json"))
    assert _reused(shown["verdict"]["reasons"])["params"]["other_session"] == "s-a1-0"


def test_reasons_naming_another_schools_session_are_blind_outside_its_scope(world: World):
    """Every reason that names another session: the reused photo, the duplicate clip (its
    window's session, or a command no window has), the double-booked lecturer."""
    reused = {
        "kind": "closing",
        "other_session": "s-a1-0",
        "other_photo": "9",
        "other_received_at": T0.isoformat(),
        "distance_bits": 0,
        "max_bits": 6,
    }
    duplicate = {
        "window_no": 1,
        "window_start_at": T0.isoformat(),
        "window_end_at": T0.isoformat(),
        "other_window": "s-a1-0#2",
    }
    booked = {
        "other_session": "s-a1-0",
        "other_classroom": "room-a1",
        "basis": "photo",
        "conflict_at": T0.isoformat(),
        "distance_m": 900,
        "seconds_apart": 30.0,
    }
    raw = [
        {"code": "photo_reused", "params": reused},
        {"code": "clip_duplicate", "params": duplicate},
        {"code": "clip_duplicate", "params": duplicate | {"other_window": "command roll-7"}},
        {"code": "lecturer_double_booked", "params": booked},
    ]
    factory = world.context.session_factory
    with factory() as db:
        school_b = Reader(db, ClassSession.classroom_id.in_(["room-b1"]))
        school_a = Reader(db, ClassSession.classroom_id.in_(["room-a1", "room-a2", "room-a3"]))
        for lang in ("zh-CN", "en"):
            blind = reasons_view(raw, lang, UTC, school_b)
            assert "s-a1-0" not in json.dumps(blind, ensure_ascii=False)
            assert "room-a1" not in json.dumps(blind, ensure_ascii=False)
            assert "roll-7" not in json.dumps(blind, ensure_ascii=False)
            assert [r["code"] for r in blind] == [r["code"] for r in raw]
            assert all(r["severity"] == "hard" for r in blind)
            assert blind[3]["params"]["distance_m"] == 900
        own = reasons_view(raw, "en", UTC, school_a)
        assert [r["params"] for r in own[:2] + own[3:]] == [reused, duplicate, booked]
        assert "s-a1-0" in own[0]["text"] and "s-a1-0#2" in own[1]["text"]
        # A command no window has is nobody's the reader can be sure of: blind but to all-readers.
        assert "other_window" not in own[2]["params"]
        everything = reasons_view(raw, "en", UTC, Reader.of_everything(db))
        assert [r["params"] for r in everything] == [item["params"] for item in raw]
