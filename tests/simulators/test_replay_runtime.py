"""The replay runtime on real parts, from a small hand-made plan: a real Mosquitto, the real
server and two real agent processes on the shared clock, one 4G link and one fake modem each,
photos over HTTP.

Two classrooms hold an 8-minute class at the same time (30x: 16 real seconds):
- ``room-a``: an honest camera, both photos: ``verified``;
- ``room-b``: the lens is covered from the start of class, and its 4G link goes down in the
  middle of it and comes back three hours later: its clips are cut and uploaded then, so the
  replay must jump the quiet hours, and the verdict is ``rejected`` for what the clips show.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from simulators.phone import make_photo
from simulators.plan import (
    Action,
    CameraPeriod,
    CameraPlan,
    DevicePlan,
    Expected,
    LinkShape,
    PhotoUpload,
    ReplayPlan,
    SessionPlan,
)
from simulators.replay import run_replay

CLOCK_START = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai
CLASS_START = CLOCK_START + timedelta(minutes=2)
CLASS_END = CLASS_START + timedelta(minutes=8)
LINK_BACK = CLASS_START + timedelta(hours=3)
ROOMS = {"a": (31.2304, 121.4737), "b": (31.2404, 121.4737)}
# A covered lens is black, still (nothing moves) and unlike the reference view; the camera was
# offline for more than the server's limit during class.
COVERED_AND_OFFLINE = Expected(
    "rejected", frozenset({"video_black", "video_frozen", "camera_moved", "camera_offline"})
)


def _photo(room: str, kind: str, at: datetime, seed: int) -> PhotoUpload:
    lat, lon = ROOMS[room]
    return PhotoUpload(
        at=at,
        session_id=f"s-{room}",
        lecturer_id=f"lect-{room}",
        kind="opening" if kind == "opening" else "closing",
        jpeg=make_photo(taken_at=at, lat=lat, lon=lon, scene_seed=seed),
    )


def small_plan() -> ReplayPlan:
    setup = {
        "institutions": [{"id": "school-1", "name": "上海职业技能培训学校"}],
        "classrooms": [
            {
                "id": f"room-{r}",
                "institution_id": "school-1",
                "name": f"教室 {r}",
                "lat": lat,
                "lon": lon,
                "datum": "wgs84",
            }
            for r, (lat, lon) in ROOMS.items()
        ],
        "devices": [{"device_id": f"cam-{r}", "classroom_id": f"room-{r}"} for r in ROOMS],
        "lecturers": [
            {
                "id": f"lect-{r}",
                "institution_id": "school-1",
                "name": f"老师 {r}",
                "token": f"token-of-lect-{r}-0123456789",
            }
            for r in ROOMS
        ],
        "classes": [{"id": "welding-1", "institution_id": "school-1", "name": "焊工初级"}],
        "sessions": [
            {
                "id": f"s-{r}",
                "class_id": "welding-1",
                "classroom_id": f"room-{r}",
                "lecturer_id": f"lect-{r}",
                "start": CLASS_START.isoformat(),
                "duration_min": 8,
            }
            for r in ROOMS
        ],
    }
    covered = (CameraPeriod(start=CLASS_START, end=None, trouble="covered"),)
    devices = (
        DevicePlan("cam-a", "room-a", CameraPlan(scene_seed=11)),
        DevicePlan("cam-b", "room-b", CameraPlan(scene_seed=12, periods=covered), LinkShape()),
    )
    sessions = tuple(
        SessionPlan(
            session_id=f"s-{r}",
            classroom_id=f"room-{r}",
            device_id=f"cam-{r}",
            lecturer_id=f"lect-{r}",
            start=CLASS_START,
            end=CLASS_END,
            behaviours=("honest",) if r == "a" else ("lens_covered", "uplink_down"),
            expected=Expected("verified", frozenset()) if r == "a" else COVERED_AND_OFFLINE,
        )
        for r in ROOMS
    )
    photos = sorted(
        [
            _photo(r, kind, at, seed)
            for r in ROOMS
            for kind, at, seed in (
                ("opening", CLASS_START + timedelta(minutes=1), 100 + ord(r)),
                ("closing", CLASS_END - timedelta(minutes=1), 200 + ord(r)),
            )
        ],
        key=lambda p: p.at,
    )
    actions = (
        Action(CLASS_START + timedelta(minutes=4), "link_down", device_id="cam-b"),
        Action(LINK_BACK, "link_up", device_id="cam-b"),
    )
    return ReplayPlan(
        name="two classrooms",
        clock_start=CLOCK_START,
        speed=30.0,
        setup=setup,
        lecturer_tokens={f"lect-{r}": f"token-of-lect-{r}-0123456789" for r in ROOMS},
        server_settings={
            "CLASSCAM_WINDOWS_PER_SESSION": "2",
            "CLASSCAM_WINDOW_LENGTH_S": "60",
            "CLASSCAM_PHOTO_GRACE_S": "600",
        },
        devices=devices,
        sessions=sessions,
        actions=actions,
        photos=tuple(photos),
    )


@pytest.mark.timeout(180)
def test_a_small_day_replays_to_the_expected_verdicts(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    console = Console(record=True, width=160)
    result = run_replay(
        small_plan(), workdir=tmp_path / "replay", report=report_file, console=console
    )
    outcomes = {o.session.session_id: o for o in result.outcomes}
    assert (outcomes["s-a"].verdict, outcomes["s-a"].reasons) == ("verified", frozenset())
    assert outcomes["s-a"].clips == 2 and outcomes["s-a"].photos == 2
    assert (outcomes["s-b"].verdict, outcomes["s-b"].reasons) == (
        "rejected",
        COVERED_AND_OFFLINE.reasons,
    )
    assert outcomes["s-b"].clips == 2  # cut and uploaded once the link was back
    assert result.ok

    report = json.loads(report_file.read_text())
    assert report["matched"] == 2 and not report["timed_out"]
    assert {s["session_id"]: s["match"] for s in report["sessions"]} == {"s-a": True, "s-b": True}
    assert report["devices"]["cam-b"]["link_downs"] == 1
    assert report["devices"]["cam-a"]["link_downs"] == 0
    assert all(d["bytes_up"] > 0 and d["modem_commands"] > 0 for d in report["devices"].values())
    assert set(report["photo_uploads"].values()) == {201}
    # The quiet hours were jumped, not waited: the clock reached the link's return.
    assert report["jumps"] and datetime.fromisoformat(report["simulated"]["end"]) > LINK_BACK
    table = console.export_text()
    assert "2/2 as expected" in table and "✗" not in table
