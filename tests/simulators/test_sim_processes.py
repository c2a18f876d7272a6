"""The real server and a real agent as processes on one shared accelerated clock.

A real Mosquitto, ``simulators.sim_server run`` (``classcam-server run`` on the shared clock) and
one ``simulators.sim_agent run`` (``classcam-agent run`` on it, filming its camera plan). The
simulated day is in the future of the machine's own clock, so anything still stamped or decided
by the system clock shows: a session would not open on time, a window would never be asked for
or shown. A 10-minute class then runs in about 10 real seconds through production code paths.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from ingest_server.db import make_engine, make_session_factory
from ingest_server.models import (
    Clip,
    ClipCheck,
    DeviceEvent,
    DeviceHealth,
    FeedEvent,
    SessionWindow,
)
from simulators.broker import MosquittoBroker
from simulators.harness import Device, ServerProcess, provision_device
from simulators.plan import CameraPlan
from simulators.school import Room, school_setup, wait_until
from simulators.sim_clock import ClockConductor

T0 = datetime(2027, 3, 1, 0, 28, tzinfo=UTC)  # 08:28 in Shanghai, months ahead of the machine
SESSION_START = T0 + timedelta(minutes=2)
SESSION_S = 600.0
SPEED = 60.0
SERVER_ENV = {
    "CLASSCAM_WINDOWS_PER_SESSION": "1",
    "CLASSCAM_WINDOW_LENGTH_S": "60",
    "CLASSCAM_WINDOW_REQUEST_DELAY_S": "10",
    # Asked again only after a simulated hour: requested_at stays the first request's time.
    "CLASSCAM_WINDOW_RETRY_S": "3600",
    # Real seconds between scheduler passes (a poll: what it decides, it decides on the clock).
    "CLASSCAM_SCHEDULER_INTERVAL_S": "0.2",
}
# Heartbeats keep their production 30 s: on the shared clock, one every half real second.
AGENT_SETTINGS: dict[str, dict[str, object]] = {
    "recording": {"segment_seconds": 1.0, "keyframe_interval_s": 1.0, "bitrate": 200_000},
}


@dataclass
class Day:
    conductor: ClockConductor
    server: ServerProcess
    device: Device
    agent: subprocess.Popen[bytes]
    started_real: float  # time.monotonic() when the clock went to SPEED


def sim_agent(device: Device, command: str, clock: Path, plan: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "simulators.sim_agent",
        command,
        "--config",
        str(device.config_path),
        "--clock",
        str(clock),
        "--camera-plan",
        str(plan),
    ]


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Day]:
    tmp = tmp_path_factory.mktemp("simday")
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    agent: subprocess.Popen[bytes] | None = None
    server: ServerProcess | None = None
    try:
        device = provision_device(tmp / "devices", "cam-sim", broker, settings=AGENT_SETTINGS)
        room = Room("sim", device.device_id, device.public_key, 0, SESSION_START, SESSION_S)
        setup = tmp / "setup.json"
        setup.write_text(json.dumps(school_setup([room]), ensure_ascii=False))
        plan = tmp / "camera-plan.json"
        plan.write_text(CameraPlan(scene_seed=3).to_json())
        # Real time while the processes start; simulated time races only once they are up.
        conductor = ClockConductor(tmp / "clock.json", T0, speed=1.0)
        server = ServerProcess(
            tmp / "server",
            broker,
            run_module="simulators.sim_server",
            extra_env={**SERVER_ENV, "CLASSCAM_SIM_CLOCK": str(conductor.path)},
        )
        server.cli("import", str(setup))
        subprocess.run(
            sim_agent(device, "reference", conductor.path, plan),
            check=True,
            capture_output=True,
            timeout=60,
        )
        server.start()
        agent = device.spawn(
            "run",
            "--clock",
            str(conductor.path),
            "--camera-plan",
            str(plan),
            module="simulators.sim_agent",
        )
        server.api_headers()  # minted now: a CLI run costs seconds, simulated minutes later
        online = wait_until(lambda: b"connected" in (device.root / "agent.log").read_bytes(), 30)
        assert online, (device.root / "agent.log").read_text()[-3000:]
        conductor.set_speed(SPEED)
        yield Day(conductor, server, device, agent, time.monotonic())
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
        if server is not None:
            server.stop()
        broker.stop()


def rows(day: Day, query: object) -> list[object]:
    """Rows of the server's database, read as a supervisor's report would (read-only)."""
    engine = make_engine(day.server.db_url)
    try:
        with make_session_factory(engine)() as db:
            return list(db.scalars(query))  # type: ignore[call-overload]
    finally:
        engine.dispose()


def within(value: datetime, target: datetime, seconds: float) -> bool:
    return abs((value - target).total_seconds()) <= seconds


def test_the_agent_opens_the_session_on_simulated_time(day: Day) -> None:
    query = select(DeviceEvent).where(DeviceEvent.type == "session_started")
    assert wait_until(lambda: bool(rows(day, query)), 20), day.server.tail_log()
    (started,) = rows(day, query)
    assert isinstance(started, DeviceEvent)
    # The agent's housekeeping looks at the timetable every half real second: 30 simulated s.
    assert within(started.at, SESSION_START, 45), started.at
    assert within(started.received_at, started.at, 45)
    assert abs(started.clock_offset_s or 0.0) < 5
    opened = rows(day, select(FeedEvent).where(FeedEvent.kind == "session_opened"))
    assert opened and isinstance(opened[0], FeedEvent)
    assert within(opened[0].at, SESSION_START, 60)  # the feed is stamped on the same clock


def test_heartbeats_come_every_30_simulated_seconds(day: Day) -> None:
    def beats() -> list[datetime]:
        return [
            datetime.fromisoformat(json.loads(h.heartbeat)["at"])
            for h in rows(day, select(DeviceHealth))
            if isinstance(h, DeviceHealth) and h.heartbeat
        ]

    assert wait_until(lambda: bool(beats()), 10)
    first = beats()[0]
    assert wait_until(lambda: beats()[0] > first, 5)  # a fresh one within 5 real seconds
    (health,) = rows(day, select(DeviceHealth))
    assert isinstance(health, DeviceHealth) and health.status == "online"
    assert health.last_heartbeat_at is not None
    assert (day.conductor.now() - health.last_heartbeat_at).total_seconds() < 90


def test_the_window_is_cut_and_stored_in_simulated_time(day: Day) -> None:
    end = SESSION_START + timedelta(seconds=SESSION_S)
    clips = select(Clip).where(Clip.kind != "reference")
    assert wait_until(lambda: bool(rows(day, clips)), 40), day.server.tail_log()
    real_s = time.monotonic() - day.started_real
    (window,) = rows(day, select(SessionWindow))
    (clip,) = rows(day, clips)
    assert isinstance(window, SessionWindow) and isinstance(clip, Clip)
    assert clip.cmd_id == window.cmd_id
    # Asked for after the class (and the request delay), on the simulated clock.
    assert window.requested_at is not None
    assert end + timedelta(seconds=10) <= window.requested_at <= end + timedelta(seconds=120)
    # The cut covers the window (1 s keyframes: exact to a second), in simulated time.
    assert clip.cut_start <= window.start + timedelta(seconds=1)
    assert clip.cut_end >= window.end - timedelta(seconds=1)
    assert SESSION_START <= clip.cut_start < clip.cut_end <= end + timedelta(seconds=1)
    assert window.end <= clip.stored_at <= end + timedelta(minutes=5)
    assert real_s < 45, f"a 10-minute class took {real_s:.1f} real seconds"


def test_the_live_scene_passes_the_video_checks_against_its_reference(day: Day) -> None:
    reference = select(Clip).where(Clip.kind == "reference")
    assert wait_until(lambda: bool(rows(day, reference)), 10)
    checked = (
        select(ClipCheck)
        .join(Clip, Clip.id == ClipCheck.clip_id)
        .where(ClipCheck.checked_at.is_not(None), Clip.cmd_id.is_not(None))
    )
    assert wait_until(lambda: bool(rows(day, checked)), 30), day.server.tail_log()
    (check,) = rows(day, checked)
    assert isinstance(check, ClipCheck)
    assert (check.black, check.frozen, check.moved) == (False, False, False), vars(check)
    assert check.checked_at is not None and check.checked_at > SESSION_START


def test_the_api_shows_the_window_once_the_simulated_class_is_over(day: Day) -> None:
    headers = day.server.api_headers()
    with httpx.Client(base_url=day.server.api_url, headers=headers, timeout=10) as client:

        def shown() -> bool:
            view = client.get("/sessions/sess-sim", params={"lang": "en"}).json()
            return bool(view["windows"]) and view["windows"][0]["clip"] is not None

        assert wait_until(shown, 20)
        view = client.get("/sessions/sess-sim", params={"lang": "en"}).json()
    assert view["state"] == "closed"
    assert within(datetime.fromisoformat(view["opened_at"]), SESSION_START, 45)
