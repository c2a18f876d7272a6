"""The replay's plan camera switches what it films at the plan's simulated times, mid-session,
and fails the way the agent's session recorder expects of a camera that was unplugged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from common.clock import VirtualClock
from edge_agent.errors import CameraError
from simulators.cameras import StillSceneCamera
from simulators.plan import CameraPeriod, CameraPlan
from simulators.plan_camera import PlanCamera, lean_elapsed

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
