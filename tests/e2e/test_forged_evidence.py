"""Forged evidence, end to end on real parts: a real Mosquitto with classcam's ACL, the real
server process, real agents, and an adversary (``simulators.forger``) that holds a camera's
key and broker password and answers the server's cut commands with validly signed forgeries.

Six classrooms hold a short session at the same time:
- ``random``: its own camera's key signs random bytes for every window;
- ``otherday``: a real clip filmed the day before, its manifest honestly saying so;
- ``onefor3``: one real clip given for all three windows, each manifest claiming its window;
- ``covered``: the camera is covered (black video) and the classroom next door uploads its
  live footage first, under the very upload ids the covered camera will use;
- ``honest``: an honest camera, the same neighbour racing it under its upload ids;
- ``absent``: no camera records at all; the neighbour answers every window.

None of the forged sessions may end ``verified``; each is rejected for what its clips are.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.clock import SystemClock, utc_now
from common.commands import Command
from common.schemas import EventType
from common.signing import load_private_key
from edge_agent import commands as agent_commands
from edge_agent.config import load_config
from edge_agent.service import AgentService
from simulators.broker import MosquittoBroker
from simulators.cameras import CoveredCamera
from simulators.forger import ForgedClip, Forger, real_clip
from simulators.harness import Device, ServerProcess, provision_device
from simulators.school import (
    Room,
    agent_upload_id,
    post_photo,
    read_feed,
    school_setup,
    session_view,
    sleep_until,
    verdict_history,
    wait_until,
)

SESSION_S = 20.0
WINDOW_S = 3.0
CLIP_GRACE_S = 20.0
SERVER_ENV = {
    "CLASSCAM_WINDOWS_PER_SESSION": "3",
    "CLASSCAM_WINDOW_LENGTH_S": str(WINDOW_S),
    "CLASSCAM_WINDOW_REQUEST_DELAY_S": "4",
    "CLASSCAM_DURATION_TOLERANCE_S": "4",
    "CLASSCAM_PHOTO_GRACE_S": "600",
    "CLASSCAM_CLIP_GRACE_S": str(CLIP_GRACE_S),
    "CLASSCAM_SCHEDULER_INTERVAL_S": "0.5",
}
AGENT_SETTINGS: dict[str, dict[str, object]] = {
    "camera": {"width": 320, "height": 240, "fps": 10.0},
    "recording": {"segment_seconds": 1.0, "keyframe_interval_s": 1.0, "bitrate": 300_000},
    "heartbeat": {"interval_s": 2.0},
}
FORGED = ("random", "otherday", "onefor3")
RACED = ("covered", "honest", "absent")  # the neighbour answers their windows first
CASES = (*FORGED, *RACED)


def _window_cmd_id(session_id: str, idx: int) -> str:
    # What anyone can guess from the protocol: the server names a window's cut this way.
    from ingest_server.sessions import window_cmd_id

    return window_cmd_id(session_id, idx)


def _own_upload_id(device_id: str, cmd_id: str) -> str:
    return agent_upload_id(agent_commands.upload_id_for, device_id, cmd_id)


def _forger(device: Device, broker: MosquittoBroker, **kw: Any) -> Forger:
    return Forger(
        device.device_id,
        (device.root / "broker-password").read_text().strip(),
        load_private_key(device.root / "device-key.pem"),
        host=broker.host,
        port=broker.port,
        **kw,
    )


def _answers(case: str, workdir: Path) -> Any:
    """How the holder of ``case``'s camera key answers each cut command."""
    shared: dict[str, ForgedClip] = {}

    def answer(cmd: Command) -> ForgedClip:
        assert cmd.start is not None and cmd.end is not None
        if case == "random":
            frames = round(WINDOW_S * 10)
            return ForgedClip(os.urandom(200_000), cmd.start, cmd.end, WINDOW_S, frames)
        if case == "otherday":
            return real_clip(workdir, cmd.start - timedelta(days=1), WINDOW_S, seed=7)
        # One clip, filmed in the first window asked for, offered for every window; each
        # manifest claims the window it answers.
        first = shared.setdefault("clip", real_clip(workdir, cmd.start, WINDOW_S, seed=8))
        span = first.cut_end - first.cut_start
        return ForgedClip(first.data, cmd.start, cmd.start + span, first.duration_s, first.frames)

    return answer


@pytest.fixture(scope="module")
def forged_day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("forged")
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    server = ServerProcess(tmp / "server", broker, extra_env=SERVER_ENV)
    agents: list[AgentService] = []
    forgers: dict[str, Forger] = {}
    try:
        devices = {
            case: provision_device(tmp / "devices", f"cam-{case}", broker, settings=AGENT_SETTINGS)
            for case in (*CASES, "neighbour")
        }
        # Minted before the day's clock starts: a CLI run costs seconds of CPU.
        api_headers = server.api_headers()
        start = utc_now() + timedelta(seconds=9)
        rooms = {
            case: Room(
                case,
                d.device_id,
                d.public_key,
                i,
                session_start=start if case != "neighbour" else None,
                session_s=SESSION_S,
            )
            for i, (case, d) in enumerate(devices.items())
        }
        (tmp / "setup.json").write_text(
            json.dumps(school_setup(rooms.values()), ensure_ascii=False)
        )
        server.cli("import", str(tmp / "setup.json"))
        server.start()
        for case in ("covered", "honest"):
            config = load_config(devices[case].config_path)
            factory = None
            if case == "covered":
                factory = lambda c=config: CoveredCamera(  # noqa: E731
                    c.device_id, width=320, height=240, fps=10.0, clock=SystemClock()
                )
            agent = AgentService(config, camera_factory=factory)
            agent.start()
            agents.append(agent)
        for case in FORGED:
            forgers[case] = _forger(
                devices[case],
                broker,
                answer=_answers(case, tmp),
                upload_id_for=lambda cmd_id, d=devices[case].device_id: _own_upload_id(d, cmd_id),
            ).start()
        neighbour = _forger(devices["neighbour"], broker).start()
        live = real_clip(tmp, start, SESSION_S, seed=3, fps=5)  # next door, during the class
        client = httpx.Client(base_url=server.api_url, timeout=10, headers=api_headers)

        sleep_until(start + timedelta(seconds=1))
        for case in FORGED:  # a forger says what a recording camera would
            forgers[case].emit(EventType.SESSION_STARTED, session_id=rooms[case].session_id)
        photos = {c: [post_photo(client, rooms[c], "opening", 10 * i)] for i, c in enumerate(CASES)}
        sleep_until(start + timedelta(seconds=SESSION_S))
        for case in FORGED:
            forgers[case].emit(
                EventType.SESSION_STOPPED,
                session_id=rooms[case].session_id,
                data={"recorded_s": SESSION_S, "reason": "planned_end"},
            )
        # The neighbour answers the other rooms' windows before their cameras are asked,
        # under the upload ids those cameras will use (windows are named cut-{session}-{i}).
        neighbour_ids = {}
        for case in RACED:
            for idx in range(3):
                cmd_id = _window_cmd_id(rooms[case].session_id, idx)
                upload_id = _own_upload_id(devices[case].device_id, cmd_id)
                state = neighbour.upload(
                    upload_id, live, cmd_id=cmd_id, session_id=rooms[case].session_id
                )
                neighbour_ids[(case, idx)] = (upload_id, state)
        for i, case in enumerate(CASES):
            photos[case].append(post_photo(client, rooms[case], "closing", 10 * i + 1))

        views: dict[str, dict[str, Any]] = {}

        def settled() -> bool:
            for case in CASES:
                views[case] = session_view(client, rooms[case].session_id)
            return all(views[c]["verdict"]["state"] != "pending" for c in CASES)

        settled_in_time = wait_until(settled, timeout=CLIP_GRACE_S + 40, step=0.5)
        db = sqlite3.connect(server.db_url.removeprefix("sqlite:///"))
        db.row_factory = sqlite3.Row
        clips = [dict(r) for r in db.execute("SELECT * FROM clips ORDER BY id")]
        db.close()
        yield {
            "views": views,
            "settled": settled_in_time,
            "feed": read_feed(client),
            "photos": photos,
            "forgers": forgers,
            "neighbour_ids": neighbour_ids,
            "clips": clips,
            "devices": devices,
            "rooms": rooms,
            "zh": session_view_zh(client, rooms["random"].session_id),
            "server": server,
        }
        neighbour.stop()
    finally:
        for forger in forgers.values():
            forger.stop()
        for agent in agents:
            agent.stop()
        server.stop()
        broker.stop()


def session_view_zh(client: httpx.Client, session_id: str) -> dict[str, Any]:
    try:
        return dict(client.get(f"/sessions/{session_id}").json())
    except httpx.HTTPError as exc:
        return {"verdict": {"reasons": [{"text": repr(exc)}]}}


def _codes(view: dict[str, Any]) -> set[str]:
    return {r["code"] for r in view["verdict"]["reasons"]}


def _state(day: dict[str, Any], case: str) -> tuple[str, list[Any]]:
    view = day["views"][case]
    return view["verdict"]["state"], view["verdict"]["reasons"]


def test_the_forgers_answered_every_window_and_the_server_took_the_uploads(
    forged_day: dict[str, Any],
):
    for case in FORGED:
        forger = forged_day["forgers"][case]
        assert len({c.cmd_id for c in forger.commands}) == 3, (case, forger.commands)
        assert sorted(forger.uploads.values()) == ["complete"] * 3, (case, forger.uploads)
        assert not forger.errors, forger.errors
    assert {s for _, s in forged_day["neighbour_ids"].values()} == {"complete"}
    assert all(codes == [201, 201] for codes in forged_day["photos"].values())


def test_random_bytes_signed_by_the_camera_are_rejected_as_unreadable(
    forged_day: dict[str, Any],
):
    state, reasons = _state(forged_day, "random")
    assert state == "rejected", reasons
    unreadable = [r for r in reasons if r["code"] == "clip_unreadable"]
    assert sorted(r["params"]["window_no"] for r in unreadable) == [1, 2, 3], reasons
    text = next(r["text"] for r in forged_day["zh"]["verdict"]["reasons"])
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), "zh-CN by default"


def test_a_real_clip_from_another_day_is_outside_the_window(forged_day: dict[str, Any]):
    state, reasons = _state(forged_day, "otherday")
    assert state == "rejected", reasons
    outside = [r for r in reasons if r["code"] == "clip_outside_window"]
    assert sorted(r["params"]["window_no"] for r in outside) == [1, 2, 3], reasons
    for reason in outside:  # the evidence a person can check: a day early, none covered
        assert reason["params"]["covered_pct"] == 0
        assert abs(reason["params"]["shift_s"] + 86400) < 5, reason


def test_one_clip_for_three_windows_proves_at_most_one(forged_day: dict[str, Any]):
    state, reasons = _state(forged_day, "onefor3")
    assert state == "rejected", reasons
    duplicate = [r for r in reasons if r["code"] == "clip_duplicate"]
    assert len(duplicate) == 2, reasons
    assert {r["params"]["window_no"] for r in duplicate} == {2, 3}
    assert all(r["params"]["other_window"].endswith("#1") for r in duplicate), duplicate


def test_the_neighbour_uploaded_first_under_the_own_cameras_ids(forged_day: dict[str, Any]):
    """The race the next two tests rely on did happen: for every window, the neighbour's clip
    was stored first, under the id the classroom's own camera then used too."""
    clips = forged_day["clips"]
    devices = forged_day["devices"]
    for case in ("covered", "honest"):
        own = devices[case].device_id
        for idx in range(3):
            upload_id, _ = forged_day["neighbour_ids"][(case, idx)]
            owners = [c["device_id"] for c in clips if c["upload_id"] == upload_id]
            assert owners == ["cam-neighbour", own], (case, idx, owners)


def test_a_covered_camera_is_not_saved_by_the_neighbours_live_footage(
    forged_day: dict[str, Any],
):
    state, reasons = _state(forged_day, "covered")
    assert state == "rejected", reasons
    assert "video_black" in _codes(forged_day["views"]["covered"]), reasons
    assert "verified" not in verdict_history(forged_day["feed"], "sess-covered")
    for window in forged_day["views"]["covered"]["windows"]:
        assert window["clip"]["device_id"] == "cam-covered", window


def test_the_own_cameras_clip_proves_its_windows_despite_the_neighbours_upload(
    forged_day: dict[str, Any],
):
    state, reasons = _state(forged_day, "honest")
    assert state == "verified", reasons
    windows = forged_day["views"]["honest"]["windows"]
    assert len(windows) == 3
    for window in windows:
        assert window["clip"]["device_id"] == "cam-honest", window
        assert window["clip"]["proof"] == "proven"
        assert window["clips_offered"] == 2, "the neighbour's clip was offered and refused"
    assert "rejected" not in verdict_history(forged_day["feed"], "sess-honest")


def test_another_classrooms_footage_never_verifies_a_class_without_its_camera(
    forged_day: dict[str, Any],
):
    history = verdict_history(forged_day["feed"], "sess-absent")
    assert "verified" not in history, history
    state, reasons = _state(forged_day, "absent")
    assert state == "rejected", reasons
    codes = _codes(forged_day["views"]["absent"])
    assert "clip_wrong_device" in codes, reasons
    wrong = [r for r in reasons if r["code"] == "clip_wrong_device"]
    assert {r["params"]["device_id"] for r in wrong} == {"cam-neighbour"}
    assert {r["params"]["installed_device_id"] for r in wrong} == {"cam-absent"}


def test_no_forged_session_was_ever_verified(forged_day: dict[str, Any]):
    for case in (*FORGED, "covered", "absent"):
        history = verdict_history(forged_day["feed"], f"sess-{case}")
        assert history and "verified" not in history, (case, history)
