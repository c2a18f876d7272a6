"""What the server's video checks conclude about a replayed camera's clips, period by period.

The simulated cameras draw their sensor noise cheaply (windows of one noise field, saturating
uint8 arithmetic) so that several can record at once on an accelerated clock; these tests hold
that the cheap frames still read as what the plan means: a live room is neither black, frozen
nor moved; a covered lens is black; a printed photo is frozen under its fresh noise; a camera
turned to another classroom is moved and shows that classroom."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.clock import VirtualClock
from edge_agent.camera import Frame
from ingest_server.video_checks import SanityReport, check_clip, reference_from_image
from ingest_server.view_match import View
from simulators.clip_files import write_mp4
from simulators.plan import CameraPeriod, CameraPlan
from simulators.plan_camera import PlanCamera

T0 = datetime(2026, 11, 30, 0, 30, tzinfo=UTC)
FPS = 2  # as the replay records: 320x240, 2 fps, a keyframe a second, 100 kbit/s
PERIOD_S = 20
OWN_SCENE, OTHER_SCENE = 7, 99
KINDS = ("live", "covered", "frozen", "moved", "live_again")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


PLAN = CameraPlan(
    scene_seed=OWN_SCENE,
    fps=float(FPS),
    periods=(
        CameraPeriod(at(20), at(40), "covered"),
        CameraPeriod(at(40), at(60), "frozen"),
        CameraPeriod(at(60), at(80), "moved", scene_seed=OTHER_SCENE),
    ),
)


def encode(path: Path, frames: list[Frame]) -> Path:
    """Frames as the agent's recorder encodes them: H.264 in MP4, no B-frames."""
    return write_mp4(path, (frame.image for frame in frames), fps=FPS, bitrate=100_000)


def jpeg_view(image: np.ndarray) -> np.ndarray:
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    return reference_from_image(bytes(jpeg.tobytes()))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SanityReport]:
    """One clip per period of ``PLAN``, checked against the camera's own reference still, with
    the other classroom's view on offer."""
    folder = tmp_path_factory.mktemp("plan-camera-checks")
    clock = VirtualClock(T0)
    camera = PlanCamera("cam-checks", PLAN, clock=clock)
    camera.open()
    frames = [camera.read() for _ in range(len(KINDS) * PERIOD_S * FPS)]
    reference = jpeg_view(frames[0].image)
    other = PlanCamera("cam-other", CameraPlan(scene_seed=OTHER_SCENE), clock=VirtualClock(T0))
    other.open()
    other_views = {"room-other": View(jpeg_view(other.read().image))}
    out = {}
    for index, kind in enumerate(KINDS):
        start, end = at(index * PERIOD_S), at((index + 1) * PERIOD_S)
        clip = [f for f in frames if start <= f.wall < end]
        assert len(clip) == PERIOD_S * FPS
        out[kind] = check_clip(
            encode(folder / f"{kind}.mp4", clip),
            reference=reference,
            other_views=lambda: other_views,
        )
    return out


@pytest.mark.parametrize("kind", ["live", "live_again"])
def test_a_live_room_passes_every_check(reports: dict[str, SanityReport], kind: str) -> None:
    report = reports[kind]
    assert not report.black and not report.frozen and report.moved is False
    assert report.frozen_fraction < 0.3
    assert report.other_view is None and report.other_views_compared == 0


def test_a_covered_lens_is_black(reports: dict[str, SanityReport]) -> None:
    report = reports["covered"]
    assert report.black and report.dark_share == 1.0


def test_a_printed_photo_under_fresh_noise_is_frozen_and_not_moved(
    reports: dict[str, SanityReport],
) -> None:
    report = reports["frozen"]
    assert report.frozen and report.frozen_fraction == 1.0
    assert not report.black and report.moved is False


def test_a_camera_turned_to_another_classroom_is_moved_and_shows_it(
    reports: dict[str, SanityReport],
) -> None:
    report = reports["moved"]
    assert report.moved and not report.black and not report.frozen
    assert report.other_view == "room-other"
