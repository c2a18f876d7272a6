"""Whose evidence a clip is, whatever its manifest claims (``ingest_server.evidence.scope``):
a camera of one school naming another school's session, a camera moved to another school,
a download that starts past byte 0 after a manifest read, and recording gaps written with and
without an offset — on the evidence API's world (real SQLite, real H.264 clips, signed
manifests, the setup import moving a camera)."""

# ruff: noqa: F811  (``world`` is the evidence API's fixture, imported to be used by name)
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select
from test_evidence_api import NOW, T0, World, _first_window, store_clip, world  # noqa: F401

from common.clock import VirtualClock
from common.schemas import ClipKind, Event, EventType
from common.signing import public_key_b64
from ingest_server import crud
from ingest_server.models import AuditEntry, ClassSession, Clip, Device, DeviceCommand, Upload
from ingest_server.sessions import record_device_event
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import clip_path
from ingest_server.verdicts import VerdictKeeper
from simulators.phone import make_photo


def _forge_into_b(world: World, *, with_window: bool, bound: bool) -> int:
    """cam-a1 (school a) signs a clip naming school b's session s-b1-1 (and, ``with_window``,
    its first window's command, as if it had been asked)."""
    with world.context.session_factory.begin() as db:
        if bound:  # as the scheduler binds a session that began to its classroom's camera
            session = db.get(ClassSession, "s-b1-1")
            assert session is not None
            session.device_id = "cam-b1"
        window = _first_window(db, "s-b1-1")
        window.requested_at = window.end + timedelta(minutes=1)  # school b's camera was asked
        clip, _ = store_clip(
            db, world.context.store, world.keys["a1"], world.tmp, window, "cam-a1", 77
        )
        if not with_window:
            clip.cmd_id = None
        return clip.id


@pytest.mark.parametrize("with_window", [True, False])
@pytest.mark.parametrize("bound", [True, False])
def test_a_camera_cannot_file_footage_in_another_schools_session(
    world: World, with_window: bool, bound: bool
):
    clip_id = _forge_into_b(world, with_window=with_window, bound=bound)
    for route in ("video", "manifest"):
        refused = world.get("inst-b", f"/api/v1/clips/{clip_id}/{route}")
        assert refused.status_code == 403, route
        assert "cam-a1" not in refused.text
        assert world.get("lb1", f"/api/v1/clips/{clip_id}/{route}").status_code == 403
        for reader in ("admin", "supervisor"):  # the attempt stays on record for them
            assert world.get(reader, f"/api/v1/clips/{clip_id}/{route}").status_code == 200
    assert world.get("inst-b", f"/ui/clips/{clip_id}/video").status_code == 403

    # Not the session's window clip, not even as a failed one.
    for who in ("inst-b", "admin"):
        view = world.get(who, "/api/v1/sessions/s-b1-1").json()
        assert view["windows"][0]["clip"] is None and view["windows"][0]["clips_offered"] == 0
        assert "cam-a1" not in json.dumps(view["windows"])

    # Not in school b's export: no clip, manifest, key or audit entry of cam-a1's.
    export = world.get("inst-b", "/api/v1/sessions/s-b1-1/export")
    assert export.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(export.content))
    names = archive.namelist()
    assert not [n for n in names if "cam-a1" in n or n.startswith(f"clips/{clip_id}.")]
    index = json.loads(archive.read("MANIFEST.json"))
    assert clip_id not in [c["id"] for c in index["clips"]]
    for name in names:
        if name.startswith("audit/"):
            entry = json.loads(archive.read(name))
            subject = (entry.get("subject_type"), entry.get("subject_id"))
            assert subject != ("clip", str(clip_id)), name

    # Nor does it count in school b's verdict: the window still lacks its own camera's clip.
    _recompute(world, "s-b1-1")
    reasons = world.get("inst-b", "/api/v1/sessions/s-b1-1").json()["verdict"]["reasons"]
    assert "cam-a1" not in json.dumps(reasons, ensure_ascii=False)
    first = [r["code"] for r in reasons if r["params"].get("window_no") == 1]
    assert first == ["clip_missing"], reasons  # as if nothing had come, not a wrong device

    # The row keeps what the camera signed: evidence of the attempt.
    with world.context.session_factory() as db:
        clip = db.get(Clip, clip_id)
        assert clip is not None and clip.session_id == "s-b1-1"


def _recompute(world: World, session_id: str) -> None:
    keeper = VerdictKeeper(world.context.session_factory, world.context.settings, NOW_CLOCK)
    keeper.recompute({session_id})


NOW_CLOCK = VirtualClock(start=NOW)


def test_a_neighbours_camera_of_the_same_school_is_offered_and_refused_by_name(world: World):
    """cam-a2 (school a's next classroom) answers s-a1-1's window: school a sees the attempt
    in its own session — shown, exported, and refused as ``clip_wrong_device`` — and school b
    sees none of it."""
    with world.context.session_factory.begin() as db:
        window = _first_window(db, "s-a1-1")
        window.requested_at = window.end + timedelta(minutes=1)
        clip, _ = store_clip(
            db, world.context.store, world.keys["a2"], world.tmp, window, "cam-a2", 78
        )
        clip_id = clip.id
    _recompute(world, "s-a1-1")
    view = world.get("inst-a", "/api/v1/sessions/s-a1-1").json()
    shown = view["windows"][0]
    assert shown["clips_offered"] == 1 and shown["clip"]["device_id"] == "cam-a2"
    assert shown["clip"]["proof"] == "failed"
    wrong = [r for r in view["verdict"]["reasons"] if r["code"] == "clip_wrong_device"]
    assert [r["params"]["device_id"] for r in wrong] == ["cam-a2"]
    assert world.get("inst-a", f"/api/v1/clips/{clip_id}/video").status_code == 200
    assert world.get("inst-b", f"/api/v1/clips/{clip_id}/video").status_code == 403
    export = world.get("inst-a", "/api/v1/sessions/s-a1-1/export")
    index = json.loads(zipfile.ZipFile(io.BytesIO(export.content)).read("MANIFEST.json"))
    assert clip_id in [c["id"] for c in index["clips"]]


def _still(world: World, device_id: str, upload_id: str, at: datetime, cmd_id: str | None) -> int:
    """A session-less still of ``device_id`` taken and stored at ``at`` (a roll call's when
    ``cmd_id`` names one)."""
    data = make_photo(taken_at=None, lat=None, lon=None, scene_seed=len(upload_id), size=(320, 240))
    relative = clip_path(device_id, upload_id, at, "image/jpeg")
    world.context.store.put_bytes(relative, data)
    sha = hashlib.sha256(data).hexdigest()
    with world.context.session_factory.begin() as db:
        db.add(
            Upload(
                upload_id=upload_id,
                device_id=device_id,
                manifest="{}",
                size=len(data),
                sha256=sha,
                chunk_size=len(data),
                state="complete",
                received_ranges=json.dumps([[0, len(data)]]),
                chunks_received=1,
                chunks_duplicate=0,
                created_at=at,
                updated_at=at,
            )
        )
        db.flush()
        clip = Clip(
            upload_id=upload_id,
            device_id=device_id,
            session_id=None,
            cmd_id=cmd_id,
            kind=ClipKind.SNAPSHOT.value,
            sha256=sha,
            size=len(data),
            path=relative,
            requested_start=at,
            requested_end=at,
            cut_start=at,
            cut_end=at,
            duration_s=0.0,
            frames=1,
            width=64,
            height=48,
            codec="jpeg",
            stored_at=at,
        )
        db.add(clip)
        if cmd_id is not None:
            db.add(
                DeviceCommand(
                    cmd_id=cmd_id,
                    device_id=device_id,
                    type="snapshot",
                    payload="{}",
                    created_at=at,
                    expires_at=at + timedelta(days=3650),
                    sends=1,
                )
            )
        db.flush()
        return clip.id


_UTC8 = timezone(timedelta(hours=8))


def _move_cameras(world: World, moves: dict[str, str]) -> datetime:
    """The setup import moves each camera to its classroom; returns when cam-a1's began."""
    keys = {"cam-a1": world.keys["a1"], "cam-b1": world.keys["b1"]}
    rows = [
        {"device_id": d, "classroom_id": room, "public_key": public_key_b64(keys[d])}
        for d, room in moves.items()
    ]
    path = world.tmp / "move.json"
    path.write_text(json.dumps({"devices": rows}))
    with world.context.session_factory.begin() as db:
        import_rows(db, read_rows(path), world.context.settings)
    with world.context.session_factory() as db:
        device = db.get(Device, "cam-a1")
        assert device is not None and device.classroom_since is not None
        return device.classroom_since


def test_a_moved_camera_takes_no_history_to_its_new_school(world: World):
    session_clip = world.clips["s-a1-0"]
    with world.context.session_factory.begin() as db:
        session = db.get(ClassSession, "s-a1-0")
        assert session is not None
        session.device_id = "cam-a1"  # it began: the scheduler bound its camera
    old_still = _still(world, "cam-a1", "snap-old", T0, "rc-old")
    assert world.get("inst-a", f"/api/v1/clips/{old_still}/video").status_code == 200
    assert world.get("inst-b", f"/api/v1/clips/{old_still}/video").status_code == 403

    since = _move_cameras(world, {"cam-a1": "room-b1", "cam-b1": "room-a1"})
    new_still = _still(world, "cam-a1", "snap-new", since + timedelta(minutes=1), "rc-new")

    for clip_id in (session_clip, old_still):
        for route in ("video", "manifest"):
            url = f"/api/v1/clips/{clip_id}/{route}"
            assert world.get("inst-b", url).status_code == 403, url
            assert world.get("admin", url).status_code == 200, url
    # School a keeps its session's clip (through the session); the still it took there is
    # now nobody's but the readers of everything (the server keeps no older installation).
    assert world.get("inst-a", f"/api/v1/clips/{session_clip}/video").status_code == 200
    assert world.get("inst-a", f"/api/v1/clips/{old_still}/video").status_code == 403
    # What the camera takes in its new classroom is its new school's.
    assert world.get("inst-b", f"/api/v1/clips/{new_still}/video").status_code == 200
    assert world.get("inst-a", f"/api/v1/clips/{new_still}/video").status_code == 403

    # The roll call's follow-up follows the same rule.
    old = world.get("inst-b", "/api/v1/devices/cam-a1/snapshots/rc-old")
    assert old.status_code == 403 and old.headers["content-type"] != "image/jpeg"
    assert old.json()["detail"]["code"] == "not_in_scope"
    new = world.get("inst-b", "/api/v1/devices/cam-a1/snapshots/rc-new")
    assert new.status_code == 200 and new.headers["content-type"] == "image/jpeg"
    assert world.get("admin", "/api/v1/devices/cam-a1/snapshots/rc-old").status_code == 200


def test_only_a_move_starts_an_installation(world: World):
    """The import and ``crud.register_device`` set ``classroom_since`` when a camera changes
    classroom, and only then (re-running either for the same classroom is no move)."""
    key = public_key_b64(world.keys["a2"])
    path = world.tmp / "same.json"
    path.write_text(
        json.dumps(
            {"devices": [{"device_id": "cam-a2", "classroom_id": "room-a2"} | {"public_key": key}]}
        )
    )
    with world.context.session_factory.begin() as db:
        import_rows(db, read_rows(path), world.context.settings)
        crud.register_device(db, "cam-a2", key, "room-a2", clock=VirtualClock(start=NOW))
    with world.context.session_factory() as db:
        device = db.get(Device, "cam-a2")
        assert device is not None and device.classroom_since is None
    moved_at = NOW + timedelta(hours=1)
    with world.context.session_factory.begin() as db:
        crud.register_device(db, "cam-a2", key, "room-a3", clock=VirtualClock(start=moved_at))
    with world.context.session_factory() as db:
        device = db.get(Device, "cam-a2")
        assert device is not None
        assert (device.classroom_id, device.classroom_since) == ("room-a3", moved_at)


def _clip_rows(world: World) -> list[dict[str, Any]]:
    with world.context.session_factory() as db:
        rows = db.scalars(
            select(AuditEntry)
            .where(AuditEntry.subject_type == "clip", AuditEntry.action == "viewed")
            .order_by(AuditEntry.seq)
        )
        return [json.loads(r.details) for r in rows]


def test_a_download_past_byte_0_after_a_manifest_read_is_logged(world: World):
    clip_id = world.clips["s-a1-0"]
    data = world.clip_bytes[clip_id]
    client = world.client("inst-a")
    assert client.get(f"/api/v1/clips/{clip_id}/manifest").status_code == 200
    whole = client.get(f"/api/v1/clips/{clip_id}/video", headers={"Range": "bytes=1-"})
    assert whole.status_code == 206 and whole.content == data[1:]
    rows = _clip_rows(world)
    assert [(r["route"], r.get("download")) for r in rows] == [
        ("GET /clips/{id}/manifest", None),
        ("GET /clips/{id}/video", True),
    ]
    assert rows[-1]["range"] == "bytes=1-"
    # A later range of the same viewing is not logged again; another caller's is.
    assert client.get(f"/api/v1/clips/{clip_id}/video", headers={"Range": "bytes=9-"}).is_success
    assert len(_clip_rows(world)) == 2
    other = world.client("supervisor").get(
        f"/api/v1/clips/{clip_id}/video", headers={"Range": "bytes=9-"}
    )
    assert other.status_code == 206 and len(_clip_rows(world)) == 3


def test_gaps_written_with_and_without_an_offset_read_alike(world: World):
    start = T0 + timedelta(days=2)
    naive = {
        "start": (start + timedelta(minutes=5)).replace(tzinfo=None).isoformat(),
        "end": (start + timedelta(minutes=6)).replace(tzinfo=None).isoformat(),
    }
    shifted = {  # the same kind of bounds, written in UTC+08:00
        "start": (start + timedelta(minutes=15)).astimezone(_UTC8).isoformat(),
        "end": (start + timedelta(minutes=16)).astimezone(_UTC8).isoformat(),
    }
    events = [
        (EventType.SESSION_STARTED, start, {}),
        (EventType.RECORDING_GAP, start + timedelta(minutes=10), naive),
        (EventType.RECORDING_GAP, start + timedelta(minutes=20), shifted),
    ]
    with world.context.session_factory.begin() as db:
        for n, (kind, at, data) in enumerate(events):
            event = Event(
                event_id=f"gap-{n}",
                device_id="cam-a1",
                type=kind,
                at=at,
                clock_offset_s=0.0,
                session_id="s-a1-2",
                data=data,
            )
            record_device_event(db, event, NOW)
    client = world.client("inst-a")
    view = client.get("/api/v1/sessions/s-a1-2")
    assert view.status_code == 200
    assert view.json()["timeline"]["gaps"] == [
        {
            "start": (start + timedelta(minutes=m)).isoformat(),
            "end": (start + timedelta(minutes=m + 1)).isoformat(),
        }
        for m in (5, 15)
    ]
    assert client.get("/ui/sessions/s-a1-2").status_code == 200
    assert client.get("/api/v1/sessions/s-a1-2/export").status_code == 200
