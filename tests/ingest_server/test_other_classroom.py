"""Another classroom's footage, signed with this classroom's key, is told from a camera that
merely turned: real H.264 clips of the simulator's classroom scenes, checked by the real clip
checker against the reference stills the classrooms' cameras stored, on a real database.

Classroom A's camera answers with (1) its own room, (2) classroom B's room, the fraud of a
school holding both computers' keys, and (3) a view no classroom has (the camera turned);
classroom D's camera, which never sent a reference view, answers with B's room too: only a
warning, as an honest room built to the same plan as B's would look the same. A reference still
showing another classroom's view (A's key sending B's still) is refused as A's view."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import pytest
from rows import stored_clip

from common.clock import VirtualClock
from common.schemas import ClipKind
from common.signing import generate_private_key, public_key_b64
from ingest_server.clip_checks import ClipChecker
from ingest_server.db import make_engine, make_session_factory
from ingest_server.facts import window_clips
from ingest_server.models import AuditEntry, Classroom, ClipCheck
from ingest_server.rules.clip_picture import picture_reasons
from ingest_server.rules.reasons import ReasonCode
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore
from ingest_server.video_checks import check_clip, reference_from_image
from ingest_server.view_match import View
from simulators.cameras import StillSceneCamera
from simulators.clip_files import write_mp4

W, H, FPS, SECONDS = 320, 240, 10, 6
T0 = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)
SCENES = {"room-a": 1, "room-b": 2, "room-c": 3}
TURNED = 99  # a view no classroom has


def camera(scene: int, pace: float = 0.0) -> StillSceneCamera:
    return StillSceneCamera(
        "cam", width=W, height=H, fps=FPS, clock=VirtualClock(T0), scene_seed=scene, pace=pace
    )


def banner(seconds: float) -> str:
    return f"2026-11-30 09:00:{seconds:06.3f}"


def encode(path: Path, scene: int) -> Path:
    """A live clip of ``scene`` (someone leaning across, sensor noise, a ticking clock) as the
    agent encodes it: H.264 in MP4, a keyframe a second, no B-frames."""
    source = camera(scene, pace=2.0)
    pictures = (source.draw(index / FPS, banner(index / FPS)) for index in range(SECONDS * FPS))
    return write_mp4(path, pictures, fps=FPS)


def reference_jpeg(scene: int) -> bytes:
    """The still a classroom's camera uploads at installation: one of its frames, as JPEG."""
    ok, jpeg = cv2.imencode(".jpg", camera(scene).draw(0.0, banner(0.0)))
    assert ok
    return bytes(jpeg.tobytes())


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Camera A's three answers: its own room, classroom B's, and a turned camera's."""
    folder = tmp_path_factory.mktemp("other-classroom")
    scenes = {"own": SCENES["room-a"], "room_b": SCENES["room-b"], "turned": TURNED}
    return {name: encode(folder / f"{name}.mp4", scene) for name, scene in scenes.items()}


def _setup() -> dict[str, Any]:
    key = public_key_b64(generate_private_key())
    rooms = [*SCENES, "room-d"]  # D's camera never sent a reference view
    return {
        "institutions": [{"id": "school", "name": "职业培训学校"}],
        "classrooms": [
            {
                "id": room,
                "institution_id": "school",
                "name": room,
                "lat": 31.2304 + i * 0.001,
                "lon": 121.4737,
                "datum": "wgs84",
            }
            for i, room in enumerate(rooms)
        ],
        "devices": [
            {"device_id": f"cam-{room[-1]}", "classroom_id": room, "public_key": key}
            for room in rooms
        ],
        "lecturers": [],
        "classes": [],
        "sessions": [],
    }


def stored_reference(
    db: Any, store: EvidenceStore, device: str, upload_id: str, scene: int, at: datetime
) -> int:
    """``device`` uploaded a still of ``scene`` as its classroom's reference view."""
    ref = stored_clip(db, device, upload_id, at, at, at, path=f"refs/{upload_id}.jpg")
    ref.kind = ClipKind.REFERENCE.value
    store.put_bytes(f"refs/{upload_id}.jpg", reference_jpeg(scene))
    return int(ref.id)


def run_checks(factory: Any, store: EvidenceStore, at: datetime) -> None:
    checker = ClipChecker(factory, store, lambda _: None, VirtualClock(start=at))
    try:
        checker.wake().result(timeout=60)
    finally:
        checker.close()


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[Any, EvidenceStore]]:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    path = tmp_path / "setup.json"
    path.write_text(json.dumps(_setup()))
    with factory.begin() as db:
        import_rows(db, read_rows(path), settings)
    yield factory, EvidenceStore(settings.evidence_dir)
    engine.dispose()


def test_camera_a_answering_with_classroom_bs_footage_is_flagged_as_classroom_b(
    world: tuple[Any, EvidenceStore], clips: dict[str, Path]
) -> None:
    factory, store = world
    end = T0 + timedelta(seconds=SECONDS)
    # Every classroom's camera stored its reference still at installation.
    with factory.begin() as db:
        for room, scene in SCENES.items():
            stored_reference(db, store, f"cam-{room[-1]}", f"ref-{room}", scene, T0)
    ids = {}
    with factory.begin() as db:
        for name, path in clips.items():
            where = f"clips/cam-a/{name}.mp4"
            store.put_bytes(where, path.read_bytes())
            ids[name] = stored_clip(
                db, "cam-a", name, T0, end, end, cmd_id=f"cut-{name}", path=where
            ).id
        # Camera D, whose room has no view on file, answers with classroom B's footage too.
        store.put_bytes("clips/cam-d/room_b.mp4", clips["room_b"].read_bytes())
        ids["unviewed"] = stored_clip(
            db, "cam-d", "d-1", T0, end, end, cmd_id="cut-unviewed", path="clips/cam-d/room_b.mp4"
        ).id

    checker = ClipChecker(factory, store, lambda _: None, VirtualClock(start=end))
    try:
        checker.wake().result(timeout=60)
    finally:
        checker.close()

    with factory() as db:
        checks = {name: db.get(ClipCheck, clip_id) for name, clip_id in ids.items()}
        decoded = {name: window_clips(db, f"cut-{name}")[0].decoded for name in ids}
    for check in checks.values():
        assert check is not None and check.checked_at is not None and check.error is None
    own, room_b, turned = checks["own"], checks["room_b"], checks["turned"]
    assert own is not None and room_b is not None and turned is not None
    # The honest clip: its own room, nothing else asked.
    assert (own.moved, own.other_classroom_id) == (False, None)
    # Classroom B's footage: not A's view, clearly B's.
    assert room_b.moved is True and room_b.other_classroom_id == "room-b"
    assert room_b.other_view_similarity is not None and room_b.other_view_similarity > 0.5
    assert room_b.reference_similarity is not None and room_b.reference_similarity < 0.07
    # A turned camera matches no classroom: only moved.
    assert (turned.moved, turned.other_classroom_id) == (True, None)
    # Without a view of its own D cannot be moved, but the footage is still B's.
    unviewed = checks["unviewed"]
    assert unviewed is not None
    assert (unviewed.moved, unviewed.other_classroom_id) == (None, "room-b")

    # Through the facts to the rule: a hard reason naming B for the forgery, warnings else.
    params = {"window_no": 1, "window_start_at": T0.isoformat(), "window_end_at": end.isoformat()}
    codes = {}
    for name, facts in decoded.items():
        assert facts is not None
        codes[name] = [r.code for r in picture_reasons(facts, params)]
    assert codes == {
        "own": [],
        "room_b": [ReasonCode.CLIP_OTHER_CLASSROOM],
        "turned": [ReasonCode.CAMERA_MOVED],
        "unviewed": [ReasonCode.CLIP_RESEMBLES_OTHER_CLASSROOM],
    }


def test_other_views_are_asked_for_only_when_the_clip_is_not_its_own_rooms_view(
    clips: dict[str, Path],
) -> None:
    views = {room: View(reference_from_image(reference_jpeg(s))) for room, s in SCENES.items()}
    asked: list[str] = []

    def others_of_a() -> Mapping[str, View]:
        asked.append("once")
        return {room: view for room, view in views.items() if room != "room-a"}

    def check(name: str) -> tuple[bool | None, str | None]:
        report = check_clip(clips[name], reference=views["room-a"], other_views=others_of_a)
        return report.moved, report.other_view

    assert check("own") == (False, None) and asked == []
    assert check("room_b") == (True, "room-b") and len(asked) == 1
    assert check("turned") == (True, None) and len(asked) == 2

    # A classroom without a view of its own (a forger need never send one): no opinion on
    # moved, but classroom B's footage is still B's, and the room's own footage nobody's.
    def unviewed(name: str) -> tuple[bool | None, str | None]:
        report = check_clip(clips[name], other_views=others_of_a)
        return report.moved, report.other_view

    assert unviewed("room_b") == (None, "room-b")
    assert unviewed("own") == (None, None) and unviewed("turned") == (None, None)


def test_a_reference_still_of_another_classroom_is_refused_as_this_classrooms_view(
    world: tuple[Any, EvidenceStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A's key sends B's still as A's reference: were it adopted, B's footage would then *be*
    A's view and pass clean. It is refused (A keeps its installation still; D, which had
    none, still has none), recorded as a failed check naming B, logged and audited; an honest
    new still of C's own room is adopted."""
    factory, store = world
    with factory.begin() as db:
        for room, scene in SCENES.items():
            stored_reference(db, store, f"cam-{room[-1]}", f"ref-{room}", scene, T0)
    run_checks(factory, store, T0)
    later = T0 + timedelta(hours=1)
    with factory.begin() as db:
        ids = {
            "a": stored_reference(db, store, "cam-a", "forged-a", SCENES["room-b"], later),
            "d": stored_reference(db, store, "cam-d", "forged-d", SCENES["room-b"], later),
            "c": stored_reference(db, store, "cam-c", "retake-c", SCENES["room-c"], later),
        }
    with caplog.at_level("WARNING", logger="ingest_server.clip_checks"):
        run_checks(factory, store, later)

    with factory() as db:
        views = {c.id: c.reference_upload_id for c in db.query(Classroom)}
        checks = {name: db.get(ClipCheck, clip_id) for name, clip_id in ids.items()}
        audited = {
            entry.subject_id: json.loads(entry.details)
            for entry in db.query(AuditEntry).filter(AuditEntry.action == "clip_checked")
        }
    assert views == {
        "room-a": "ref-room-a",
        "room-b": "ref-room-b",
        "room-c": "retake-c",
        "room-d": None,
    }
    for name in "ad":
        check = checks[name]
        assert check is not None and check.checked_at is not None
        assert check.other_classroom_id == "room-b"
        assert check.other_view_similarity is not None and check.other_view_similarity > 0.5
        details = audited[str(ids[name])]
        assert details["result"] == "failed" and details["other_classroom_id"] == "room-b"
        assert details["adopted"] is False
    retake = checks["c"]
    assert retake is not None and retake.checked_at is not None
    assert retake.other_classroom_id is None
    assert audited[str(ids["c"])]["result"] == "passed" and audited[str(ids["c"])]["adopted"]
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 2 and all("room-b" in message for message in refused)
