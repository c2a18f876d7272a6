"""A day in miniature, end to end on real parts: a real broker, the real server (scheduler,
windows, ingest, checks, verdicts, API), real agents with synthetic cameras, photos over HTTP.

Four classrooms hold a session at the same time:
- an honest class, both photos uploaded: ``verified``;
- a class cut short by the lecturer: ``rejected`` for ``short_duration``;
- a class whose closing photo was taken 500 m away: ``photo_out_of_range``;
- a class whose camera is covered: ``video_black``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from common.clock import SystemClock, utc_now
from edge_agent.config import load_config
from edge_agent.service import AgentService
from simulators.broker import MosquittoBroker
from simulators.cameras import CoveredCamera
from simulators.harness import ServerProcess, provision_device
from simulators.phone import make_photo

ROOM = (31.2304, 121.4737)  # Shanghai, WGS-84
SESSION_S = 18.0
SERVER_ENV = {
    "CLASSCAM_WINDOWS_PER_SESSION": "2",
    "CLASSCAM_WINDOW_LENGTH_S": "3",
    "CLASSCAM_WINDOW_REQUEST_DELAY_S": "2",
    "CLASSCAM_DURATION_TOLERANCE_S": "4",
    "CLASSCAM_PHOTO_GRACE_S": "600",
    "CLASSCAM_CLIP_GRACE_S": "600",
    "CLASSCAM_SCHEDULER_INTERVAL_S": "0.5",
}
CASES = ("honest", "short", "far", "black")


def _setup(devices: dict[str, Any], start: Any) -> dict[str, Any]:
    rooms, lecturers, sessions = [], [], []
    for i, case in enumerate(CASES):
        rooms.append(
            {
                "id": f"room-{case}",
                "institution_id": "school-1",
                "name": f"教室 {i + 1}",
                "lat": ROOM[0] + i * 0.01,
                "lon": ROOM[1],
                "datum": "wgs84",
            }
        )
        lecturers.append(
            {
                "id": f"lect-{case}",
                "institution_id": "school-1",
                "name": f"老师 {i + 1}",
                "token": f"token-of-{case}-0123456789",
            }
        )
        sessions.append(
            {
                "id": f"sess-{case}",
                "class_id": "welding-1",
                "classroom_id": f"room-{case}",
                "lecturer_id": f"lect-{case}",
                "start": start.isoformat(),
                "duration_min": SESSION_S / 60,
            }
        )
    return {
        "institutions": [{"id": "school-1", "name": "上海职业技能培训学校"}],
        "classrooms": rooms,
        "devices": [
            {"device_id": d.device_id, "classroom_id": f"room-{case}", "public_key": d.public_key}
            for case, d in devices.items()
        ],
        "lecturers": lecturers,
        "classes": [{"id": "welding-1", "institution_id": "school-1", "name": "焊工初级"}],
        "sessions": sessions,
    }


def _photo(
    client: httpx.Client, case: str, kind: str, lat: float, lon: float, seed: int
) -> httpx.Response:
    data = make_photo(taken_at=utc_now(), lat=lat, lon=lon, scene_seed=seed)
    return client.post(
        f"/sessions/sess-{case}/photos/{kind}",
        files={"file": (f"{kind}.jpg", data, "image/jpeg")},
        headers={"Authorization": f"Bearer token-of-{case}-0123456789"},
    )


@pytest.fixture(scope="module")
def school_day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("day")
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    server = ServerProcess(tmp / "server", broker, extra_env=SERVER_ENV)
    agents: list[AgentService] = []
    try:
        devices = {
            case: provision_device(
                tmp / "devices",
                f"cam-{case}",
                broker,
                settings={
                    "camera": {"width": 320, "height": 240, "fps": 10.0},
                    "recording": {
                        "segment_seconds": 1.0,
                        "keyframe_interval_s": 1.0,
                        "bitrate": 300_000,
                    },
                },
            )
            for case in CASES
        }
        # Minted before the day's clock starts: a CLI run costs seconds of CPU.
        api_headers = server.api_headers()
        start = utc_now() + timedelta(seconds=10)
        setup = tmp / "setup.json"
        setup.write_text(json.dumps(_setup(devices, start), ensure_ascii=False))
        server.cli("import", str(setup))
        server.start()
        for case, device in devices.items():
            config = load_config(device.config_path)
            factory = None
            if case == "black":
                factory = lambda c=config: CoveredCamera(  # noqa: E731
                    c.device_id, width=320, height=240, fps=10.0, clock=SystemClock()
                )
            agent = AgentService(config, camera_factory=factory)
            agent.start()
            agents.append(agent)
        client = httpx.Client(base_url=server.api_url, timeout=10, headers=api_headers)
        while utc_now() < start + timedelta(seconds=2):
            time.sleep(0.2)
        uploads: dict[str, list[int]] = {}
        for i, case in enumerate(CASES):
            lat = ROOM[0] + i * 0.01
            uploads[case] = [_photo(client, case, "opening", lat, ROOM[1], 10 * i).status_code]
        time.sleep(6)
        cut = client.post(
            "/sessions/sess-short/close",
            headers={"Authorization": "Bearer token-of-short-0123456789"},
        )
        assert cut.status_code == 202, cut.text
        while utc_now() < start + timedelta(seconds=SESSION_S + 1):
            time.sleep(0.2)
        for i, case in enumerate(CASES):
            lat = ROOM[0] + i * 0.01 + (0.0045 if case == "far" else 0.0)  # ~500 m north
            uploads[case].append(
                _photo(client, case, "closing", lat, ROOM[1], 10 * i + 1).status_code
            )
        verdicts: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(verdicts) < len(CASES):
            for case in CASES:
                view = client.get(f"/sessions/sess-{case}", params={"lang": "en"}).json()
                if view["verdict"]["state"] != "pending":
                    verdicts[case] = view
            time.sleep(0.5)
        zh = client.get("/sessions/sess-short").json()
        feed = client.get("/feed", params={"after": 0, "limit": 1000}).json()
        yield {
            "verdicts": verdicts,
            "uploads": uploads,
            "zh": zh,
            "feed": feed,
            "server": server,
            "pending": {
                c: client.get(f"/sessions/sess-{c}").json() for c in CASES if c not in verdicts
            },
        }
    finally:
        for agent in agents:
            agent.stop()
        server.stop()
        broker.stop()


def _codes(view: dict[str, Any]) -> set[str]:
    return {r["code"] for r in view["verdict"]["reasons"]}


def test_photos_are_accepted_over_http(school_day: dict[str, Any]):
    assert all(codes == [201, 201] for codes in school_day["uploads"].values()), school_day[
        "uploads"
    ]


def test_an_honest_class_is_verified(school_day: dict[str, Any]):
    view = school_day["verdicts"].get("honest") or school_day["pending"]["honest"]
    assert view["verdict"]["state"] == "verified", (view["verdict"], view["windows"])
    assert len(view["windows"]) == 2 and all(w["clip"] for w in view["windows"])
    assert {p["kind"] for p in view["photos"]} == {"opening", "closing"}


def test_a_class_cut_short_is_rejected_for_short_duration(school_day: dict[str, Any]):
    view = school_day["verdicts"]["short"]
    assert view["verdict"]["state"] == "rejected"
    assert "short_duration" in _codes(view), view["verdict"]
    zh_text = next(
        r["text"] for r in school_day["zh"]["verdict"]["reasons"] if r["code"] == "short_duration"
    )
    assert any("\u4e00" <= ch <= "\u9fff" for ch in zh_text), "zh-CN by default"


def test_a_photo_taken_500_m_away_is_out_of_range(school_day: dict[str, Any]):
    view = school_day["verdicts"]["far"]
    assert view["verdict"]["state"] == "rejected"
    assert "photo_out_of_range" in _codes(view), view["verdict"]


def test_a_covered_camera_is_video_black(school_day: dict[str, Any]):
    view = school_day["verdicts"]["black"]
    assert view["verdict"]["state"] == "rejected"
    assert "video_black" in _codes(view), view["verdict"]


def test_every_verdict_change_is_in_the_feed(school_day: dict[str, Any]):
    events = school_day["feed"]["events"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    changed = {e["session_id"] for e in events if e["kind"] == "verdict_changed"}
    assert changed >= {f"sess-{c}" for c in CASES}
