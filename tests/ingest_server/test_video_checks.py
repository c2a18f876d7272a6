"""Video sanity on real H.264 files: black, frozen and moved cameras told apart from dim, quiet and
slightly shifted real ones, a printed photo under sensor noise told apart from a quiet room where
people barely move, and what a clip really holds (frames, duration, rate) read from the file.
Clips are encoded here with PyAV/libx264 (15 s, 320x240, 10 fps, a keyframe a second like the
agent's), plus real agent clips cut from a real spool."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.clock import VirtualClock
from edge_agent.camera import SyntheticCamera
from edge_agent.cutter import cut_window
from edge_agent.recorder import Recorder
from edge_agent.spool import Spool
from ingest_server.video_checks import (
    SanityError,
    SanityReport,
    check_clip,
    reference_from_clip,
    reference_from_image,
)
from simulators.cameras import StillSceneCamera
from simulators.clip_files import write_mp4
from simulators.phone import classroom_scene

W, H, FPS, SECONDS = 320, 240, 10, 15
BANNER = 22  # rows of burned-in clock, inside the default 12 % strip (29 rows)
T0 = datetime(2025, 3, 3, 1, 0, 0, tzinfo=UTC)
ROOM, OTHER_ROOM = 1, 2


def scene(seed: int) -> np.ndarray:
    """A classroom as a BGR frame."""
    rgb = np.asarray(classroom_scene(seed, (W, H)))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def noisy(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise: fresh in every frame of a live camera."""
    noise = rng.normal(0.0, sigma, image.shape)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def with_clock(image: np.ndarray, index: int) -> np.ndarray:
    """The camera's burned-in timestamp, ticking even when the picture is frozen."""
    out = image.copy()
    cv2.rectangle(out, (0, 0), (W, BANNER), (0, 0, 0), thickness=-1)
    text = f"2025-03-03 09:00:{index / FPS:06.3f}"
    cv2.putText(out, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    return out


def write_clip(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    bitrate: int = 300_000,
    keyint: int = FPS,
    faststart: bool = False,
) -> Path:
    """Encode BGR frames as H.264 in MP4, the way the agent does (libx264, no B-frames);
    ``faststart`` puts the index before the frames, as a streaming-friendly camera does."""
    return write_mp4(path, frames, fps=FPS, bitrate=bitrate, keyint=keyint, faststart=faststart)


def live(
    base: np.ndarray,
    rng: np.random.Generator,
    *,
    sigma: float = 2.0,
    person: bool = True,
    shift: tuple[int, int] = (0, 0),
    gain: float = 1.0,
    lean: float = 0.0,
) -> Iterator[np.ndarray]:
    """A live camera on ``base``: noise every frame, optionally someone walking about, or
    (``lean``, pixels a second) a seated student leaning slowly: people barely moving."""
    room = np.clip(base.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    if shift != (0, 0):
        matrix = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], dtype=np.float32)
        room = cv2.warpAffine(room, matrix, (W, H), borderMode=cv2.BORDER_REFLECT)
    for index in range(SECONDS * FPS):
        image = room.copy()
        if person:
            x = int(60 + 150 * (0.5 + 0.5 * np.sin(index / FPS * 0.8)))
            cv2.circle(image, (x, 150), 18, (40, 60, 200), thickness=-1)
            cv2.rectangle(image, (x - 15, 165), (x + 15, 230), (30, 30, 120), thickness=-1)
        if lean:
            x, shade = round(200 + lean * index / FPS), int(90 * gain)
            cv2.circle(image, (x, 160), 14, (shade, shade, 2 * shade), thickness=-1)
            cv2.rectangle(image, (x - 12, 172), (x + 12, 225), (shade, shade, shade), -1)
        yield with_clock(noisy(image, sigma, rng), index)


Maker = Callable[[str], Path]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Maker:
    """Makes (once per module) the named test clip and returns its path."""
    folder = tmp_path_factory.mktemp("clips")
    made: dict[str, Path] = {}
    room = scene(ROOM)

    def frames(name: str) -> Iterable[np.ndarray]:
        rng = np.random.default_rng(len(name))
        if name == "normal":
            return live(room, rng)
        if name == "black":  # lens covered: dark, a little noise, the clock still ticking
            dark = np.full((H, W, 3), 6, dtype=np.uint8)
            return live(dark, rng, sigma=2.0, person=False)
        if name == "frozen":  # the sensor stopped; the overlay clock did not
            still = noisy(room, 2.0, rng)
            return (with_clock(still, i) for i in range(SECONDS * FPS))
        if name == "dim":  # lights off, daylight only: dark but a real room, people barely move
            return live(room, rng, sigma=1.5, person=False, gain=0.18, lean=1.0)
        if name == "quiet":  # nobody walks; a student leans a pixel a second, sensor noise
            return live(room, rng, sigma=1.0, person=False, lean=1.0)
        if name == "other_room":
            return live(scene(OTHER_ROOM), rng)
        if name == "nudged":  # camera knocked a little, lights dimmed
            return live(room, rng, shift=(12, -8), gain=0.7)
        raise KeyError(name)

    def make(name: str) -> Path:
        if name not in made:
            if name == "quiet_long_gop":  # an IP camera's 5 s GOP at low quality
                rng = np.random.default_rng(7)
                made[name] = write_clip(
                    folder / f"{name}.mp4",
                    live(room, rng, sigma=1.0, person=False, lean=1.0),
                    bitrate=100_000,
                    keyint=5 * FPS,
                )
            else:
                made[name] = write_clip(folder / f"{name}.mp4", frames(name))
        return made[name]

    return make


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The classroom's reference still, as the agent uploads it at installation (a JPEG)."""
    ok, jpeg = cv2.imencode(".jpg", scene(ROOM), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return reference_from_image(jpeg.tobytes())


def flags(report: SanityReport) -> tuple[bool, bool, bool | None]:
    return report.black, report.frozen, report.moved


def test_a_normal_classroom_clip_raises_no_flag(clip: Maker, reference: np.ndarray) -> None:
    report = check_clip(clip("normal"), reference=reference)
    assert flags(report) == (False, False, False)
    assert report.frames_sampled == SECONDS  # one a second, keyframes only
    assert report.keyframes_only
    assert report.reference_similarity is not None and report.reference_similarity > 0.3
    assert check_clip(clip("normal")).moved is None  # no reference, no opinion


def test_a_real_agent_clip_raises_no_flag(tmp_path: Path) -> None:
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        camera = SyntheticCamera("dev-sanity", width=W, height=H, fps=FPS, clock=clock)
        Recorder(camera, spool, clock).record_for(14)
        cut = cut_window(
            spool, T0 + timedelta(seconds=1), T0 + timedelta(seconds=13), tmp_path / "cut.mp4"
        )
    report = check_clip(cut.path)
    assert flags(report) == (False, False, None)
    assert report.keyframes_only and 11 <= report.frames_sampled <= 13


def test_a_covered_lens_is_black(clip: Maker) -> None:
    report = check_clip(clip("black"))
    assert report.black
    assert report.mean_luma < 10 and report.dark_share == 1.0


def test_a_dim_but_real_room_is_not_black(clip: Maker, reference: np.ndarray) -> None:
    report = check_clip(clip("dim"), reference=reference)
    assert flags(report) == (False, False, False)
    # Darker on average than the black threshold: only its structure keeps it from being black.
    assert report.mean_luma < 32 and report.luma_std > 6


def test_a_frozen_feed_under_a_ticking_clock_is_frozen(clip: Maker) -> None:
    report = check_clip(clip("frozen"))
    assert report.frozen and not report.black
    assert report.median_keyframe_change < 2.0  # rate control re-quantising, no more


def test_a_quiet_room_with_sensor_noise_is_not_frozen(clip: Maker) -> None:
    report = check_clip(clip("quiet"))
    assert not report.frozen
    # Only the first keyframes, compared with one a second or two back, show too little lean.
    assert report.frozen_fraction < 0.2 and report.median_keyframe_change > 5.0


def photo_clip(
    path: Path, noise: int, *, lean: float = 0.0, seconds: int = SECONDS, bitrate: int = 300_000
) -> Path:
    """The still-scene camera's frames (a picture of the room under fresh +/-``noise`` sensor
    noise and a ticking clock; ``lean`` px/s: a student leaning, a live quiet room)."""
    camera = StillSceneCamera(
        "dev-photo", width=W, height=H, fps=FPS, clock=VirtualClock(T0), noise=noise, pace=lean
    )
    frames = (
        camera.draw(i / FPS, f"2025-03-03 09:00:{i / FPS:06.3f}") for i in range(seconds * FPS)
    )
    return write_clip(path, frames, bitrate=bitrate)


@pytest.mark.parametrize("noise", [3, 6])
def test_a_printed_photo_under_sensor_noise_is_frozen(tmp_path: Path, noise: int) -> None:
    # Every keyframe differs from the last by the noise (mean absolute difference ~1.5-3, five
    # to ten times what a frozen feed shows), yet nothing in the room moves.
    report = check_clip(photo_clip(tmp_path / "photo.mp4", noise))
    assert report.frozen and not report.black
    assert report.frozen_fraction == 1.0
    assert max(report.keyframe_changes) < 4.0


@pytest.mark.parametrize("noise", [3, 6])
def test_a_quiet_room_under_the_same_noise_is_not_frozen(tmp_path: Path, noise: int) -> None:
    report = check_clip(photo_clip(tmp_path / "quiet.mp4", noise, lean=1.0))
    assert not report.frozen
    assert report.frozen_fraction < 0.3 and report.median_keyframe_change > 6.0


def test_a_printed_photo_recorded_by_the_agent_is_frozen(tmp_path: Path) -> None:
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        camera = StillSceneCamera("dev-photo", width=W, height=H, fps=FPS, clock=clock, noise=3)
        Recorder(camera, spool, clock, bitrate=300_000).record_for(16)
        cut = cut_window(
            spool, T0 + timedelta(seconds=1), T0 + timedelta(seconds=15), tmp_path / "cut.mp4"
        )
    report = check_clip(cut.path)
    assert flags(report) == (False, True, None)
    assert report.keyframes_only and report.keyframes_compared >= 13


def test_a_minute_clip_reports_its_frames_duration_and_rate(tmp_path: Path) -> None:
    path = photo_clip(tmp_path / "minute.mp4", 3, lean=2.0, seconds=60, bitrate=150_000)
    report = check_clip(path)
    assert report.decoded_frames == 60 * FPS
    assert report.decoded_duration_s == pytest.approx(60.0, abs=0.01)
    assert report.frame_rate == pytest.approx(FPS)
    assert not report.frozen and report.keyframes_compared == 60


def test_an_agent_clip_reports_frames_that_fit_its_duration(tmp_path: Path) -> None:
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        camera = SyntheticCamera("dev-facts", width=W, height=H, fps=FPS, clock=clock)
        Recorder(camera, spool, clock).record_for(14)
        cut = cut_window(
            spool, T0 + timedelta(seconds=1), T0 + timedelta(seconds=13), tmp_path / "cut.mp4"
        )
    report = check_clip(cut.path)
    assert report.frame_rate == pytest.approx(FPS, rel=0.01)
    assert report.decoded_duration_s == pytest.approx(cut.duration_s, abs=0.15)
    assert report.decoded_frames == pytest.approx(report.decoded_duration_s * FPS, abs=1)


def test_a_truncated_clip_raises_or_reports_fewer_frames(tmp_path: Path) -> None:
    whole = photo_clip(tmp_path / "whole.mp4", 3, lean=2.0)
    fast = write_clip(
        tmp_path / "fast.mp4",
        (frame for frame in live(scene(ROOM), np.random.default_rng(1))),
        faststart=True,
    )
    assert check_clip(fast).decoded_frames == SECONDS * FPS
    for source in (whole, fast):
        data = source.read_bytes()
        for keep in (0.3, 0.7):
            cut = tmp_path / f"{source.stem}_{keep}.mp4"
            cut.write_bytes(data[: int(len(data) * keep)])
            try:
                report = check_clip(cut)
            except SanityError:
                continue
            assert report.decoded_frames < SECONDS * FPS


def test_random_bytes_raise(tmp_path: Path) -> None:
    noise = tmp_path / "random.mp4"
    noise.write_bytes(np.random.default_rng(0).bytes(200_000))
    with pytest.raises(SanityError):
        check_clip(noise)


def test_a_quiet_room_from_a_long_gop_camera_is_not_frozen(clip: Maker) -> None:
    # Its P-frames are nearly all skip blocks (identical to the frame before), so only its
    # keyframes can show the room is live; black and moved are sampled from all frames.
    report = check_clip(clip("quiet_long_gop"))
    assert not report.frozen and not report.black
    assert not report.keyframes_only
    assert report.frames_sampled == SECONDS and report.keyframes_compared == 3


def test_another_room_is_moved(clip: Maker, reference: np.ndarray) -> None:
    report = check_clip(clip("other_room"), reference=reference)
    assert report.moved is True
    assert report.reference_similarity is not None and report.reference_similarity < 0.03


def test_a_nudged_dimmer_view_of_the_same_room_is_not_moved(
    clip: Maker, reference: np.ndarray
) -> None:
    report = check_clip(clip("nudged"), reference=reference)
    assert report.moved is False
    assert report.reference_similarity is not None and report.reference_similarity > 0.3


def test_a_reference_taken_from_a_clip_works_the_same(clip: Maker) -> None:
    from_clip = reference_from_clip(clip("quiet"))
    assert from_clip.shape == (H, W) and from_clip.dtype == np.uint8
    assert check_clip(clip("nudged"), reference=from_clip).moved is False
    assert check_clip(clip("other_room"), reference=from_clip).moved is True
    assert check_clip(clip("black"), reference=from_clip).moved is True


def test_undecodable_files_raise_sanity_error(clip: Maker, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip("normal").read_bytes()[:5000])
    for path in (garbage, truncated, tmp_path / "missing.mp4"):
        with pytest.raises(SanityError):
            check_clip(path)
    with pytest.raises(SanityError):
        reference_from_image(b"not a jpeg")
