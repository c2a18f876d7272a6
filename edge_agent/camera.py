"""The camera contract (``CameraSource``) and a synthetic camera for tests and the simulator.

Real backends (picamera2, V4L2, RTSP) live behind the same small contract and import their
hardware libraries lazily, inside their own modules, because picamera2 probes ``/dev/video*``
at import time (STYLE.md).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Protocol

from common.clock import Clock
from edge_agent.errors import CameraError

if TYPE_CHECKING:
    # Only for annotations: numpy is imported where frames are drawn, so an agent with an
    # encoded camera (RTSP, stream copy) never loads it (11 MB of its peak RSS otherwise).
    import numpy as np

# China has had no daylight saving since 1991, so a fixed offset is exact and needs no tzdata.
SHANGHAI = timezone(timedelta(hours=8), "CST")


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured picture and when it was taken, on both of the injected clock's scales."""

    image: np.ndarray  # H x W x 3 uint8, BGR
    wall: datetime  # aware UTC
    mono: float  # clock.monotonic() seconds


class CameraSource(Protocol):
    """What the recorder needs from a camera, real or fake."""

    name: str
    width: int
    height: int
    fps: float

    def open(self) -> None:
        """Start capturing; raise ``CameraError`` if the camera cannot be opened."""

    def read(self) -> Frame:
        """Block (through the clock) until the next frame is due and return it.

        Raises ``CameraError`` when the camera has gone away.
        """

    def close(self) -> None:
        """Stop capturing; safe to call twice."""


def banner_text(device_id: str, wall: datetime) -> str:
    """The line burned into every synthetic frame: device id and Beijing time to the ms."""
    local = wall.astimezone(SHANGHAI)
    return f"{device_id}  {local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d} CST"


class SyntheticCamera:
    """A camera that draws a moving gradient, a bouncing box and the time, paced by a ``Clock``.

    Every frame differs (the banner carries the wall time to the millisecond), so a frozen or
    spliced clip is visible, and with a ``VirtualClock`` 30 s of video take only as long as it
    takes to draw and encode them. ``fail_after_frames`` or ``vanish()`` make it disappear
    the way an unplugged USB camera does: ``read`` raises ``CameraError``.
    """

    BANNER_HEIGHT = 28

    def __init__(
        self,
        device_id: str,
        *,
        width: int = 640,
        height: int = 360,
        fps: float = 15.0,
        clock: Clock,
        fail_after_frames: int | None = None,
    ) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            # I420 (what the encoder takes) needs even dimensions.
            raise ValueError(f"width and height must be positive and even, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.device_id = device_id
        self.name = f"synthetic:{device_id}"
        self.width = width
        self.height = height
        self.fps = fps
        self.frames_delivered = 0
        self._clock = clock
        self._fail_after = fail_after_frames
        self._gone = threading.Event()
        self._open = False
        self._t0 = 0.0
        self._slot = 0
        self._background = self._make_background(width, height)

    @staticmethod
    def _make_background(width: int, height: int) -> np.ndarray:
        import numpy as np  # here, not at module level: see the TYPE_CHECKING import

        # Twice as wide as the frame, so each frame is a cheap slice of a scrolling pattern.
        x = np.arange(2 * width, dtype=np.float32)
        y = np.arange(height, dtype=np.float32)[:, None]
        phase = 2 * np.pi * x / width
        blue = 127 + 100 * np.sin(phase)
        green = np.broadcast_to(60 + 120 * y / max(height - 1, 1), (height, 2 * width))
        red = 127 + 100 * np.cos(phase + y / 40)
        image = np.stack([np.broadcast_to(blue, (height, 2 * width)), green, red], axis=-1)
        return image.astype(np.uint8)

    def open(self) -> None:
        """Start the frame clock; frames are due every ``1 / fps`` from now."""
        if self._gone.is_set():
            raise CameraError(self.name, "device not found")
        self._open = True
        self._t0 = self._clock.monotonic()
        self._slot = 0

    def vanish(self) -> None:
        """Make the camera disappear (thread-safe): the next ``read`` raises ``CameraError``."""
        self._gone.set()

    def read(self) -> Frame:
        """Wait for the next frame slot on the clock and draw that frame."""
        if not self._open:
            raise CameraError(self.name, "read before open")
        if self._gone.is_set():
            raise CameraError(self.name, "device disappeared")
        if self._fail_after is not None and self.frames_delivered >= self._fail_after:
            self._gone.set()
            raise CameraError(self.name, f"device disappeared after {self._fail_after} frames")
        now = self._clock.monotonic()
        due = self._t0 + self._slot / self.fps
        if due > now:
            self._clock.sleep(due - now)
        mono = self._clock.monotonic()
        # The next slot due after this frame: a late reader gets this frame now and skips the
        # slots it missed, as a sensor drops frames, rather than a burst of stale ones.
        self._slot = math.floor((mono - self._t0) * self.fps + 1e-6) + 1
        wall = self._clock.now()
        self.frames_delivered += 1
        return Frame(image=self._draw(mono - self._t0, wall), wall=wall, mono=mono)

    def close(self) -> None:
        """Stop; a later ``open`` restarts the frame clock."""
        self._open = False

    def _draw(self, elapsed: float, wall: datetime) -> np.ndarray:
        import numpy as np  # here, not at module level: see the TYPE_CHECKING import

        w, h = self.width, self.height
        offset = int(elapsed * w / 4) % w  # the pattern scrolls a quarter width per second
        image = np.ascontiguousarray(self._background[:, offset : offset + w])
        box = max(8, min(w, h) // 6)
        bx = int((w - box) * (0.5 + 0.5 * math.sin(elapsed * 1.3)))
        by = int((h - box - self.BANNER_HEIGHT) * (0.5 + 0.5 * math.cos(elapsed * 0.9)))
        by += self.BANNER_HEIGHT
        import cv2  # here, not at module level: the agent imports OpenCV only if it draws

        cv2.rectangle(image, (bx, by), (bx + box, by + box), (255, 255, 255), thickness=-1)
        cv2.rectangle(image, (0, 0), (w, self.BANNER_HEIGHT), (0, 0, 0), thickness=-1)
        cv2.putText(
            image,
            banner_text(self.device_id, wall),
            (6, self.BANNER_HEIGHT - 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.55,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        return image
