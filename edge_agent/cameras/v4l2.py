"""A USB (UVC) camera through OpenCV's V4L2 backend, as a ``CameraSource`` of BGR frames.

The frames are encoded to H.264 by ``Recorder`` (libx264 through PyAV), never by
``cv2.VideoWriter``, which cannot write H.264 (DESIGN.md §4). MJPG is asked for first: most
UVC cameras offer 720p at 15–30 fps only as MJPG, their raw YUYV being limited by USB 2.0.

A ``device`` that is not a character device (a video file path) is read through OpenCV's
FFmpeg backend by the same code, paced by the clock at ``fps``: tests and demos replay a
recorded classroom that way, and the end of the file is a camera that vanished.

When the camera goes away (unplugged, USB reset: ``read`` fails, the node disappears) ``read``
raises ``CameraError`` (``Recorder`` keeps what was recorded); ``reopen`` retries with capped,
jittered backoff until it is back. The agent's session recorder does the same by building a
new camera for each attempt: either way a replugged camera is picked up within the cap.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import threading
from datetime import timedelta

import cv2

from common.clock import Clock
from edge_agent.camera import Frame
from edge_agent.cameras import Backoff, wait_unless_stopped
from edge_agent.errors import CameraError

log = logging.getLogger(__name__)

# A driver timestamp this much older than "now" is a stale frame from a full buffer queue.
_MAX_DRIVER_AGE_S = 2.0


def is_v4l2_device(device: str) -> bool:
    """A camera index or a character device node (``/dev/video0``), not a file to replay."""
    if device.isdigit():
        return True
    try:
        return stat.S_ISCHR(os.stat(device).st_mode)
    except OSError:
        # A missing node is still a device path: open() then says it is missing.
        return device.startswith("/dev/")


class V4L2Camera:
    """A V4L2 camera (or a video file replayed as one) delivering BGR ``Frame`` s.

    ``width``/``height``/``fps`` are requested; after ``open`` they hold what the device
    actually delivers, since a UVC camera silently picks its nearest mode.
    """

    def __init__(
        self,
        device: str,
        *,
        width: int = 1280,
        height: int = 720,
        fps: float = 15.0,
        clock: Clock,
        fourcc: str = "MJPG",
    ) -> None:
        if width <= 0 or height <= 0 or fps <= 0:
            raise ValueError("width, height and fps must be positive")
        self.device = device
        self.name = f"v4l2:{device}"
        self.width, self.height, self.fps = width, height, fps
        self.requested = (width, height, fps)
        self.fourcc = fourcc
        self.live = is_v4l2_device(device)
        self.frames_delivered = 0
        self.reopen_delays: list[float] = []
        self._clock = clock
        self._capture: cv2.VideoCapture | None = None
        self._t0 = 0.0
        self._slot = 0

    def open(self) -> None:
        """Open the device and ask for the configured mode; ``CameraError`` if it cannot."""
        if self._capture is not None:
            return  # already open: record_session's reopen and Recorder both call this
        if not self.device.isdigit() and not os.path.exists(self.device):
            raise CameraError(self.name, "device node not found")
        capture = self._new_capture()
        if not capture.isOpened():
            capture.release()
            raise CameraError(self.name, "cannot open (busy, not a camera, or no permission)")
        if self.live:
            width, height, fps = self.requested
            # FOURCC first: the modes a camera offers depend on the pixel format.
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*self.fourcc))
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            capture.set(cv2.CAP_PROP_FPS, fps)
            # Few driver buffers: a late reader gets a recent frame, not a queue of old ones.
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 2)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or self.requested[2]
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            capture.release()
            # The encoder takes I420, which needs even dimensions.
            raise CameraError(self.name, f"unusable picture size {width}x{height}")
        if (width, height) != self.requested[:2]:
            log.warning(
                "%s: asked for %dx%d, got %dx%d", self.name, *self.requested[:2], width, height
            )
        self.width, self.height = width, height
        self.fps = fps if self.live else self.requested[2]
        self._capture = capture
        self._t0 = self._clock.monotonic()
        self._slot = 0

    def _new_capture(self) -> cv2.VideoCapture:
        if self.device.isdigit():
            return cv2.VideoCapture(int(self.device), cv2.CAP_V4L2)
        if self.live:
            return cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        return cv2.VideoCapture(self.device, cv2.CAP_FFMPEG)

    def read(self) -> Frame:
        """The next frame; ``CameraError`` if the camera has gone away."""
        capture = self._capture
        if capture is None:
            raise CameraError(self.name, "read before open")
        if not self.live:
            self._pace()
        ok, image = capture.read()
        if not ok or image is None:
            gone = not self.device.isdigit() and not os.path.exists(self.device)
            self.close()
            raise CameraError(self.name, "device node gone" if gone else "read failed")
        if image.shape != (self.height, self.width, 3):
            self.close()
            raise CameraError(
                self.name, f"frame of shape {image.shape}, expected {self.height}x{self.width}"
            )
        mono = self._capture_time(capture)
        wall = self._clock.now() - timedelta(seconds=max(0.0, self._clock.monotonic() - mono))
        self.frames_delivered += 1
        return Frame(image=image, wall=wall, mono=mono)

    def _pace(self) -> None:
        """A file has no sensor clock: deliver its frames at ``fps`` on our clock."""
        now = self._clock.monotonic()
        due = self._t0 + self._slot / self.fps
        if due > now:
            self._clock.sleep(due - now)
        now = self._clock.monotonic()
        self._slot = math.floor((now - self._t0) * self.fps + 1e-6) + 1

    def _capture_time(self, capture: cv2.VideoCapture) -> float:
        """When the frame was captured: the driver's buffer timestamp when it is on our
        monotonic clock (UVC drivers stamp CLOCK_MONOTONIC, as ``time.monotonic`` reads),
        else the time ``read`` returned."""
        now = self._clock.monotonic()
        if self.live:
            driver = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if now - _MAX_DRIVER_AGE_S <= driver <= now:
                return driver
        return now

    def reopen(self, stop: threading.Event, backoff: Backoff | None = None) -> bool:
        """Close, then retry ``open`` with capped, jittered backoff until the camera is back
        (True) or ``stop`` is set (False). Each wait is kept in ``reopen_delays``."""
        self.close()
        backoff = backoff or Backoff(initial_s=0.5, cap_s=30.0)
        while not stop.is_set():
            try:
                self.open()
            except CameraError as exc:
                delay = backoff.next_delay()
                self.reopen_delays.append(delay)
                log.info("%s: %s; trying again in %.1f s", self.name, exc.why, delay)
                wait_unless_stopped(self._clock, stop, delay)
                continue
            backoff.reset()
            return True
        return False

    def close(self) -> None:
        """Release the device; safe to call twice, and ``open`` works again afterwards."""
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()

    def __repr__(self) -> str:
        return f"V4L2Camera({self.device!r}, {self.width}x{self.height}@{self.fps:g})"
