"""The V4L2 backend: OpenCV's real capture code, a real video file standing in for the camera.

No USB camera (nor v4l2loopback, which needs a kernel module) exists here, so a video file is
opened through the same ``V4L2Camera`` code with the device given as a path; ``/dev/null``
exercises the real ``CAP_V4L2`` open path. What needs a real camera is in
docs/hardware-tests.md.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from camera_helpers import T0, synthetic_images

from common.clock import VirtualClock
from edge_agent.cameras import Backoff
from edge_agent.cameras.v4l2 import V4L2Camera, is_v4l2_device
from edge_agent.errors import CameraError
from edge_agent.recorder import Recorder
from edge_agent.spool import Spool


def write_video(path: Path, seconds: float, fps: int = 15) -> list[np.ndarray]:
    """An MP4 (H.264) of the synthetic camera's frames, as a classroom recording would be."""
    images = synthetic_images(round(seconds * fps), 640, 360, fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": "18"}
        for image in images:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode(None))
    return images


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


class ScriptedClock(VirtualClock):
    """A virtual clock that does things to the world when its time comes (unplug, replug)."""

    def __init__(self) -> None:
        super().__init__(T0)
        self.script: list[tuple[float, Callable[[], None]]] = []

    def at(self, seconds: float, action: Callable[[], None]) -> None:
        self.script.append((self.monotonic() + seconds, action))

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        for due, action in list(self.script):
            if self.monotonic() >= due:
                self.script.remove((due, action))
                action()


@pytest.fixture(scope="module")
def classroom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path_factory.mktemp("video") / "classroom.mp4"
    return path, write_video(path, 3.0)


def test_a_replayed_video_is_recorded_frame_for_frame_by_the_existing_recorder(
    tmp_path: Path, classroom: tuple[Path, list[np.ndarray]]
) -> None:
    path, source = classroom
    clock = VirtualClock(T0)
    camera = V4L2Camera(str(path), width=640, height=360, fps=15, clock=clock)
    assert not camera.live  # a file: read through FFmpeg, paced by the clock
    with Spool(tmp_path / "spool") as spool:
        recorder = Recorder(camera, spool, clock)
        # The video ends after 3 s: to the recorder that is a camera that went away.
        with pytest.raises(CameraError, match="read failed"):
            recorder.record_for(10.0)
        assert recorder.recording_id is not None
        rec = spool.recording(recorder.recording_id)
        segments = spool.segments(recorder.recording_id)
    assert [s.frames for s in segments] == [30, 15]
    assert rec.started_wall == T0 and rec.ended_wall == T0 + timedelta(seconds=3)
    assert (rec.width, rec.height, rec.fps) == (640, 360, 15.0)
    decoded = []
    for seg in segments:
        with av.open(str(seg.path)) as container:
            decoded += [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(decoded) == 45
    # Every picture is the source's own, in order: nearer its original than the one 3 later.
    for i, picture in enumerate(decoded[:-3]):
        assert difference(picture, source[i]) < 6
        assert difference(picture, source[i]) < difference(picture, source[i + 3]) / 2


def test_reopen_backs_off_until_the_camera_is_plugged_back(
    tmp_path: Path, classroom: tuple[Path, list[np.ndarray]]
) -> None:
    path = tmp_path / "video0.mp4"
    path.write_bytes(classroom[0].read_bytes())
    unplugged = tmp_path / "unplugged.mp4"
    clock = ScriptedClock()
    camera = V4L2Camera(str(path), width=640, height=360, fps=15, clock=clock)
    camera.open()
    first = camera.read()
    path.rename(unplugged)  # unplugged: the node is gone (the open handle drains to its end)
    with pytest.raises(CameraError, match="device node gone"):
        while True:
            camera.read()
    with pytest.raises(CameraError, match="not found"):
        camera.open()
    gone_at = clock.monotonic()
    clock.at(6.0, lambda: unplugged.rename(path))  # plugged back 6 s later
    backoff = Backoff(initial_s=0.5, cap_s=2.0, jitter=0.5, rng=random.Random(3))
    assert camera.reopen(threading.Event(), backoff)
    waited = clock.monotonic() - gone_at
    frame = camera.read()
    camera.close()
    delays = camera.reopen_delays
    for i, delay in enumerate(delays):  # doubling from 0.5 s to the 2 s cap, jittered down
        ceiling = min(2.0, 0.5 * 2**i)
        assert ceiling / 2 <= delay <= ceiling
    assert sum(delays) == pytest.approx(waited)
    assert 6.0 <= waited <= 6.0 + 2.0  # back within one capped wait of its return
    assert len(delays) >= 4 and backoff.attempt == 0  # reset once open
    assert frame.image.shape == first.image.shape == (360, 640, 3)
    assert frame.mono > first.mono


def test_reopen_gives_up_when_told_to_stop(tmp_path: Path) -> None:
    clock, stop = ScriptedClock(), threading.Event()
    camera = V4L2Camera(str(tmp_path / "never.mp4"), clock=clock)
    clock.at(3.0, stop.set)
    assert camera.reopen(stop, Backoff(initial_s=1.0, cap_s=1.0)) is False
    assert 3.0 <= clock.monotonic() - 1000.0 <= 3.5


def test_device_nodes_go_through_the_real_v4l2_backend() -> None:
    clock = VirtualClock(T0)
    assert is_v4l2_device("/dev/null") and is_v4l2_device("/dev/video42") and is_v4l2_device("0")
    assert not is_v4l2_device("/tmp/classroom.mp4")
    # A character device that is not a camera: OpenCV's CAP_V4L2 refuses it.
    with pytest.raises(CameraError, match="cannot open"):
        V4L2Camera("/dev/null", clock=clock).open()
    with pytest.raises(CameraError, match="device node not found"):
        V4L2Camera("/dev/video42", clock=clock).open()
    with pytest.raises(CameraError, match="read before open"):
        V4L2Camera("/dev/video42", clock=clock).read()


def test_frames_are_paced_at_the_requested_rate(
    classroom: tuple[Path, list[np.ndarray]],
) -> None:
    clock = VirtualClock(T0)
    camera = V4L2Camera(str(classroom[0]), width=640, height=360, fps=15, clock=clock)
    camera.open()
    frames = [camera.read() for _ in range(10)]
    camera.close()
    camera.close()  # twice is fine
    steps = {round(b.mono - a.mono, 6) for a, b in itertools.pairwise(frames)}
    assert steps == {round(1 / 15, 6)}
    assert frames[0].wall == T0
    assert cv2.cvtColor(frames[0].image, cv2.COLOR_BGR2GRAY).std() > 10  # a real picture
