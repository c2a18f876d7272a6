"""Real camera backends behind one factory, each imported only when its kind is used.

Two kinds of camera, two ways to record them (STYLE.md: a small contract per kind of hardware):

* **frame cameras** (``synthetic``, ``v4l2``) implement ``CameraSource``: they hand over BGR
  pictures, which ``Recorder`` encodes to H.264 here;
* **encoded cameras** (``rtsp``, ``picamera2``) implement ``EncodedCamera``: they deliver H.264
  that is already encoded (by the IP camera, or the Pi's hardware encoder) and record it into
  the spool by stream copy, never decoding it.

The agent drives them differently: a frame camera through ``Recorder`` (the session recorder
reopens it with backoff when it vanishes); an encoded camera by one blocking
``camera.record(spool, stop, ...)`` call in a thread of its own, which reconnects with capped,
jittered exponential backoff by itself and reports each outage through ``on_lost(reason)`` when
it begins and ``on_gap(start, end)`` when video is back. The backends import OpenCV's V4L2
path, PyAV's RTSP client or picamera2 inside their own modules, because picamera2 probes
``/dev/video*`` at import time.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from common.clock import Clock
from edge_agent.camera import CameraSource
from edge_agent.errors import CameraError

if TYPE_CHECKING:
    from edge_agent.config import CameraConfig, RecordingConfig
    from edge_agent.spool import Spool

log = logging.getLogger(__name__)

GapCallback = Callable[[datetime, datetime], None]
LostCallback = Callable[[str], None]
KINDS = ("synthetic", "v4l2", "rtsp", "picamera2")


@runtime_checkable
class EncodedCamera(Protocol):
    """A camera that delivers H.264 already encoded, recorded into the spool by stream copy."""

    name: str

    def record(
        self,
        spool: Spool,
        stop: threading.Event,
        *,
        segment_seconds: float = 2.0,
        session_id: str | None = None,
        on_gap: GapCallback | None = None,
        on_lost: LostCallback | None = None,
    ) -> list[int]:
        """Record until ``stop`` is set, reconnecting as needed; return the recording ids.

        ``on_lost(reason)`` is called when an outage begins, ``on_gap(start, end)`` (device
        clock) when video is back after it, or at the stop if it never came back, and for any
        stall in the camera's own timestamps longer than a second.
        """
        ...


def backoff_delay(
    attempt: int, initial_s: float, cap_s: float, rng: random.Random, jitter: float = 0.5
) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): doubling from ``initial_s``, capped at
    ``cap_s``, then scaled down by up to ``jitter`` so a fleet that lost the same network does
    not come back in lockstep. Never more than ``cap_s``."""
    if attempt < 0 or initial_s <= 0 or cap_s < initial_s or not 0 <= jitter < 1:
        raise ValueError("need attempt >= 0, 0 < initial_s <= cap_s and 0 <= jitter < 1")
    base = min(cap_s, initial_s * 2 ** min(attempt, 62))
    return base * rng.uniform(1 - jitter, 1)


@dataclass
class Backoff:
    """Successive ``backoff_delay`` values; ``reset()`` once the camera is healthy again."""

    initial_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The next delay, and count the attempt."""
        delay = backoff_delay(self.attempt, self.initial_s, self.cap_s, self.rng, self.jitter)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from ``initial_s``."""
        self.attempt = 0


def wait_unless_stopped(clock: Clock, stop: threading.Event, seconds: float) -> bool:
    """Sleep ``seconds`` on ``clock`` in short steps; return True at once if ``stop`` is set."""
    end = clock.monotonic() + seconds
    while not stop.is_set():
        left = end - clock.monotonic()
        if left <= 0:
            return False
        clock.sleep(min(left, 0.2))
    return True


def open_camera(
    config: CameraConfig,
    *,
    clock: Clock,
    device_id: str = "camera",
    recording: RecordingConfig | None = None,
) -> CameraSource | EncodedCamera:
    """Build the camera that ``config.kind`` names; nothing is opened yet.

    Only the chosen backend's module (and so its hardware library) is imported. ``recording``
    gives the picamera2 encoder its bitrate and keyframe interval. Raises ``CameraError`` for
    an unknown kind.
    """
    from edge_agent.config import RecordingConfig

    rec = recording or RecordingConfig.model_validate({})
    if config.kind == "synthetic":
        from edge_agent.camera import SyntheticCamera

        return SyntheticCamera(
            device_id, width=config.width, height=config.height, fps=config.fps, clock=clock
        )
    if config.kind == "v4l2":
        from edge_agent.cameras.v4l2 import V4L2Camera

        assert config.device is not None  # the config validates it
        return V4L2Camera(
            config.device, width=config.width, height=config.height, fps=config.fps, clock=clock
        )
    if config.kind == "rtsp":
        from edge_agent.cameras.rtsp import RtspCamera, url_with_password

        assert config.url is not None
        url = config.url
        if config.password_file is not None:
            try:
                url = url_with_password(url, config.password_file.read_text().strip())
            except OSError as exc:
                raise CameraError("rtsp", f"camera.password_file: {exc}") from exc
        return RtspCamera(url, clock=clock, transport=config.rtsp_transport, fps_hint=config.fps)
    if config.kind == "picamera2":
        from edge_agent.cameras.picamera2 import Picamera2Camera

        return Picamera2Camera(
            width=config.width,
            height=config.height,
            fps=config.fps,
            clock=clock,
            bitrate=rec.bitrate,
            keyframe_interval_s=rec.keyframe_interval_s,
            camera_num=int(config.device or 0),
        )
    raise CameraError(str(config.kind), f"unknown camera kind (expected one of {KINDS})")
