"""The replay's plan camera switches what it films at the plan's simulated times, mid-session,
and fails the way the agent's session recorder expects of a camera that was unplugged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.clock import VirtualClock
from common.schemas import EventType
from edge_agent.errors import CameraError
from edge_agent.recording import RecordingSettings, SessionRecorder
from edge_agent.spool import Spool
from simulators.cameras import StillSceneCamera
from simulators.plan import CameraPeriod, CameraPlan
from simulators.plan_camera import PlanCamera, lean_elapsed
from simulators.school import wait_until
from simulators.sim_clock import ClockConductor, SharedClock

T0 = datetime(2026, 11, 30, 0, 30, tzinfo=UTC)
BANNER = StillSceneCamera.BANNER_HEIGHT


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


PLAN = CameraPlan(
    scene_seed=7,
    fps=2.0,
    periods=(
        CameraPeriod(at(10), at(20), "covered"),
        CameraPeriod(at(30), at(40), "frozen"),
        CameraPeriod(at(50), at(60), "moved", scene_seed=99),
        CameraPeriod(at(70), at(80), "unplugged"),
    ),
)


def room(frame: np.ndarray) -> np.ndarray:
    """The picture below the burned-in clock, as signed ints."""
    return frame[BANNER:].astype(np.int16)


def mean_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(room(a) - room(b)).mean())


def frames_until(camera: PlanCamera, clock: VirtualClock, until_s: float) -> list[np.ndarray]:
    """Every frame the camera gives from now until ``until_s`` after T0 (the camera's reads
    move the virtual clock)."""
    out = []
    while clock.now() < at(until_s - 1 / camera.fps):
        out.append(camera.read().image)
    return out


def test_one_camera_session_follows_the_plan_through_every_period() -> None:
    clock = VirtualClock(T0)
    camera = PlanCamera("cam-1", PLAN, clock=clock)
    camera.open()
    live = frames_until(camera, clock, 10)
    covered = frames_until(camera, clock, 20)
    live_again = frames_until(camera, clock, 30)
    frozen = frames_until(camera, clock, 40)
    frames_until(camera, clock, 50)
    moved = frames_until(camera, clock, 60)
    frames_until(camera, clock, 70)

    assert len(live) >= 18 and camera.width == 320 and live[0].shape == (240, 320, 3)
    # Live: the room is bright and something in it moves from one second to the next.
    assert room(live[-1]).mean() > 40
    assert mean_change(live[-1], live[-3]) > mean_change(frozen[-1], frozen[-3])
    # Covered: black from the period's first frame, live again after its end.
    assert max(room(f).mean() for f in covered) < 5
    assert room(live_again[0]).mean() > 40
    # Frozen: the same picture held still, only noise changes.
    assert mean_change(frozen[1], frozen[-1]) < 2.5
    # Moved: another room entirely.
    assert mean_change(moved[-1], live_again[-1]) > 3 * mean_change(live_again[-1], live[-1])

    # Unplugged: the read that falls in the period fails as a vanished USB camera does, and
    # so does every reopen until the period ends.
    with pytest.raises(CameraError):
        frames_until(camera, clock, 72)
    with pytest.raises(CameraError):
        camera.read()
    camera.close()
    with pytest.raises(CameraError, match="not found"):
        PlanCamera("cam-1", PLAN, clock=clock).open()
    clock.advance((at(80) - clock.now()).total_seconds())
    again = PlanCamera("cam-1", PLAN, clock=clock)
    again.open()
    assert room(again.read().image).mean() > 40


def test_the_plan_is_read_on_true_time_while_frames_carry_the_device_clock() -> None:
    true_clock = VirtualClock(at(12))  # inside the covered period
    skewed = VirtualClock(at(12 + 600), monotonic_start=5000.0)  # ten minutes ahead
    camera = PlanCamera("cam-1", PLAN, clock=skewed, plan_clock=true_clock)
    camera.open()
    frame = camera.read()
    assert room(frame.image).mean() < 5
    assert frame.wall == skewed.now()


def test_a_live_figure_sways_to_and_fro_and_never_leaves_the_picture() -> None:
    swings = [lean_elapsed(t) for t in np.arange(0, 3600, 7.3)]
    assert min(swings) >= 0 and max(swings) <= 90
    assert lean_elapsed(120) < lean_elapsed(100)  # on its way back


def test_the_agents_recorder_reports_an_unplugged_period_as_a_gap_and_records_on(
    tmp_path: Path,
) -> None:
    # The agent's own session recorder on a shared clock at 20x: it loses the camera when the
    # period begins, reopens it through the factory with its backoff (1, 2, 4, 8 simulated s)
    # and reports the gap once frames flow again.
    conductor = ClockConductor(tmp_path / "clock.json", T0, speed=20.0)
    clock = SharedClock(conductor.path)
    plan = CameraPlan(scene_seed=3, periods=(CameraPeriod(at(4), at(12), "unplugged"),))
    events: list[tuple[EventType, dict[str, Any]]] = []

    def emit(type_: EventType, **fields: Any) -> bytes:
        events.append((type_, fields.get("data") or {}))
        return b""

    spool = Spool(tmp_path / "spool")
    recorder = SessionRecorder(
        spool,
        clock,
        lambda: PlanCamera("cam-1", plan, clock=clock),
        RecordingSettings(segment_seconds=1.0, keyframe_interval_s=1.0, bitrate=200_000),
        emit,
    )
    recorder.start("s-1")
    try:
        lost = lambda: [  # noqa: E731
            d for t, d in events if t == EventType.RECORDING_GAP and d["reason"] == "camera_lost"
        ]
        assert wait_until(lambda: bool(lost()), 10, step=0.05), events
    finally:
        recorder.stop()
        spool.close()
    # (A stall of the machine longer than a simulated second also shows, as a "frames_late"
    # gap: at 20x that is 50 ms of real time. Those are not this test's business.)
    kinds = [t for t, d in events if d.get("reason") != "frames_late"]
    assert kinds[:3] == [EventType.CAMERA_LOST, EventType.CAMERA_RESTORED, EventType.RECORDING_GAP]
    (gap,) = lost()
    start, end = datetime.fromisoformat(gap["start"]), datetime.fromisoformat(gap["end"])
    assert at(4) <= start <= at(5), gap
    # Back at the first retry after the period: never before it, at most one backoff late.
    assert at(12) <= end <= at(12 + 8 + 1), gap
