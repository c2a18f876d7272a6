"""The synthetic camera: moving picture, burned-in time, pacing through the injected clock."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from common.clock import VirtualClock
from edge_agent.camera import CameraSource, SyntheticCamera, banner_text
from edge_agent.errors import AgentError, CameraError

T0 = datetime(2025, 3, 3, 0, 59, 59, 950_000, tzinfo=UTC)
BANNER = SyntheticCamera.BANNER_HEIGHT


def opened(
    device_id: str = "dev-a", clock: VirtualClock | None = None, **kw: object
) -> SyntheticCamera:
    camera = SyntheticCamera(device_id, clock=clock or VirtualClock(T0), **kw)  # type: ignore[arg-type]
    camera.open()
    return camera


def test_satisfies_the_camera_contract() -> None:
    camera: CameraSource = SyntheticCamera("dev-a", clock=VirtualClock(T0))
    assert (camera.width, camera.height, camera.fps) == (640, 360, 15.0)
    assert "dev-a" in camera.name


def test_frames_are_bgr_and_stamped_by_the_clock() -> None:
    clock = VirtualClock(T0, monotonic_start=500.0)
    camera = opened(clock=clock)
    first, second = camera.read(), camera.read()
    assert first.image.shape == (360, 640, 3) and first.image.dtype == np.uint8
    assert first.wall == T0 and first.mono == 500.0
    assert second.mono - first.mono == pytest.approx(1 / 15)
    assert second.wall - first.wall == pytest.approx(
        timedelta(seconds=1 / 15), abs=timedelta(microseconds=10)
    )


def test_every_frame_differs_and_the_burned_in_time_changes() -> None:
    camera = opened()
    frames = [camera.read() for _ in range(20)]
    for before, after in itertools.pairwise(frames):
        assert not np.array_equal(before.image, after.image)
        # The banner is a solid strip, so only the text in it can make these differ.
        assert not np.array_equal(before.image[:BANNER], after.image[:BANNER])
    assert banner_text("dev-a", frames[0].wall) == "dev-a  2025-03-03 08:59:59.950 CST"
    assert banner_text("dev-a", frames[1].wall) == "dev-a  2025-03-03 09:00:00.016 CST"
    assert frames[0].image[:BANNER].max() > 200  # white text really drawn on the strip


def test_device_id_is_burned_in() -> None:
    a, b = opened("dev-a"), opened("dev-b")
    assert not np.array_equal(a.read().image[:BANNER], b.read().image[:BANNER])


def test_pacing_follows_a_virtual_clock() -> None:
    clock = VirtualClock(T0)
    camera = opened(clock=clock)
    real = time.perf_counter()
    frames = [camera.read() for _ in range(450)]
    assert time.perf_counter() - real < 10  # 30 s of camera time, far less of ours
    assert frames[-1].mono - frames[0].mono == pytest.approx(449 / 15)
    assert clock.now() - T0 == pytest.approx(
        timedelta(seconds=449 / 15), abs=timedelta(microseconds=10)
    )
    gaps = np.diff([f.mono for f in frames])
    assert np.allclose(gaps, 1 / 15)


def test_a_late_reader_skips_missed_frames_instead_of_bursting() -> None:
    clock = VirtualClock(T0)
    camera = opened(clock=clock)
    camera.read()
    clock.advance(1.0)  # e.g. a slow disk held the reader up
    behind = clock.monotonic()
    late = camera.read()
    assert late.mono == behind  # delivered at once, no catching up
    following = [camera.read() for _ in range(15)]
    assert 0 < following[0].mono - late.mono <= 1 / 15 + 1e-9
    assert following[-1].mono - late.mono == pytest.approx(1.0, abs=1 / 15)


def test_fail_after_frames_raises_camera_error() -> None:
    camera = opened(fail_after_frames=3)
    for _ in range(3):
        camera.read()
    with pytest.raises(CameraError) as info:
        camera.read()
    assert info.value.camera == camera.name
    assert isinstance(info.value, AgentError)
    with pytest.raises(CameraError):
        camera.open()  # gone for good, like an unplugged camera


def test_vanish_raises_on_next_read_and_read_needs_open() -> None:
    camera = opened()
    camera.read()
    camera.vanish()
    with pytest.raises(CameraError, match="disappeared"):
        camera.read()
    closed = SyntheticCamera("dev-a", clock=VirtualClock(T0))
    with pytest.raises(CameraError, match="before open"):
        closed.read()


def test_rejects_sizes_the_encoder_cannot_take() -> None:
    with pytest.raises(ValueError):
        SyntheticCamera("dev-a", width=641, height=360, clock=VirtualClock(T0))
    with pytest.raises(ValueError):
        SyntheticCamera("dev-a", fps=0, clock=VirtualClock(T0))
