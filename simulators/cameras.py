"""Cameras with a problem, behind the same ``CameraSource`` contract as the real ones.

A replay runs several of these at once on an accelerated clock, so a frame must cost little:
sensor noise is drawn once per camera as a field a little larger than the picture, and each
frame takes a window of it at a fresh random offset (uniform noise shifted by even one pixel is
as unrelated to itself as freshly drawn noise), added with saturating uint8 arithmetic into a
picture kept as uint8. The server's frozen check sees fresh noise in every keyframe all the same.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from common.clock import Clock
from edge_agent.camera import Frame, SyntheticCamera, banner_text


class CoveredCamera:
    """A camera whose lens is covered (or that was unplugged from its light): near-black
    frames with a little sensor noise, at the real pace."""

    def __init__(
        self, device_id: str, *, width: int, height: int, fps: float, clock: Clock, seed: int = 0
    ) -> None:
        self.name = f"covered:{device_id}"
        self.width, self.height, self.fps = width, height, fps
        self.clock = clock
        self._noise = NoiseField(
            np.random.default_rng(seed), height=height, width=width, low=0, high=5
        )
        self._next: float | None = None

    def open(self) -> None:
        self._next = self.clock.monotonic()

    def read(self) -> Frame:
        assert self._next is not None, "open() first"
        wait = self._next - self.clock.monotonic()
        if wait > 0:
            self.clock.sleep(wait)
        self._next += 1.0 / self.fps
        return Frame(image=self.draw(), wall=self.clock.now(), mono=self.clock.monotonic())

    def draw(self) -> np.ndarray:
        """One near-black frame: sensor noise of a few levels, nothing else (BGR uint8)."""
        return self._noise.window()

    def close(self) -> None:
        self._next = None


class NoiseField:
    """Uniform sensor noise in ``low..high`` levels for ``height`` x ``width`` BGR frames, drawn
    once with ``MARGIN`` spare rows and columns; every frame gets the window at a fresh random
    offset (one of ``(MARGIN + 1) ** 2``), which costs a copy instead of a draw."""

    MARGIN = 32

    def __init__(
        self, rng: np.random.Generator, *, height: int, width: int, low: int, high: int
    ) -> None:
        self.height, self.width = height, width
        self._rng = rng
        shape = (height + self.MARGIN, width + self.MARGIN, 3)
        field = rng.integers(low, high + 1, shape, dtype=np.int16)
        # Signed noise as two saturating uint8 steps: a pixel is raised or lowered, never both.
        self._raise = np.clip(field, 0, 255).astype(np.uint8)
        self._lower = np.clip(-field, 0, 255).astype(np.uint8)
        self._signed = low < 0

    def _offset(self) -> tuple[slice, slice]:
        dy, dx = (int(v) for v in self._rng.integers(0, self.MARGIN + 1, 2))
        return slice(dy, dy + self.height), slice(dx, dx + self.width)

    def window(self) -> np.ndarray:
        """A fresh frame of the noise alone (for non-negative noise: a near-black picture)."""
        rows, cols = self._offset()
        return np.ascontiguousarray(self._raise[rows, cols])

    def applied(self, image: np.ndarray) -> np.ndarray:
        """A new uint8 frame: ``image`` (uint8, unchanged) plus a fresh window of the noise,
        clipped to 0-255."""
        rows, cols = self._offset()
        frame = cv2.add(image, self._raise[rows, cols])
        if self._signed:
            cv2.subtract(frame, self._lower[rows, cols], dst=frame)
        return frame


@functools.lru_cache(maxsize=32)
def scene_picture(scene_seed: int, width: int, height: int) -> np.ndarray:
    """The classroom ``scene_seed`` as a BGR int16 picture, painted once per process (a scene
    takes tens of milliseconds to paint: a camera reopened mid-class must not stall on it).
    Read-only: every frame is drawn on a copy."""
    from simulators.phone import classroom_scene

    rgb = np.asarray(classroom_scene(scene_seed, (width, height)))
    picture = np.ascontiguousarray(rgb[:, :, ::-1]).astype(np.int16)
    picture.flags.writeable = False
    return picture


@functools.lru_cache(maxsize=32)
def scene_picture_uint8(scene_seed: int, width: int, height: int) -> np.ndarray:
    """``scene_picture`` as BGR uint8, what the cameras draw on. Read-only."""
    picture = scene_picture(scene_seed, width, height).astype(np.uint8)
    picture.flags.writeable = False
    return picture


class StillSceneCamera:
    """A camera filming a picture of a classroom: with ``pace=0`` and ``light=0`` a printed
    photo held in front of the lens, whose only change is fresh sensor noise in every frame
    (uniform, +/-``noise`` levels) and the ticking clock it burns in; with ``pace`` a seated
    person-sized figure leans across at that many pixels a second (of a 320 px wide picture,
    scaled with the width) and with ``light`` a window's light swings by that share over 10 s,
    a quiet live room. Paced by the clock, like every camera here."""

    BANNER_HEIGHT = SyntheticCamera.BANNER_HEIGHT

    def __init__(
        self,
        device_id: str,
        *,
        width: int,
        height: int,
        fps: float,
        clock: Clock,
        noise: int = 3,
        pace: float = 0.0,
        light: float = 0.0,
        scene_seed: int = 1,
        seed: int = 0,
    ) -> None:
        self.device_id = device_id
        self.name = f"still:{device_id}"
        self.width, self.height, self.fps = width, height, fps
        self.clock = clock
        self.noise, self.pace, self.light = noise, pace, light
        self._picture = scene_picture_uint8(scene_seed, width, height)
        # Where the figure and the window's light are drawn before the noise; never handed out.
        self._canvas = self._picture.copy()
        self._noise = (
            NoiseField(
                np.random.default_rng(seed), height=height, width=width, low=-noise, high=noise
            )
            if noise
            else None
        )
        self._t0: float | None = None
        self._slot = 0

    def open(self) -> None:
        self._t0 = self.clock.monotonic()
        self._slot = 0

    def read(self) -> Frame:
        assert self._t0 is not None, "open() first"
        due = self._t0 + self._slot / self.fps
        if due > self.clock.monotonic():
            self.clock.sleep(due - self.clock.monotonic())
        self._slot += 1
        wall = self.clock.now()
        return Frame(self.draw(due - self._t0, banner_text(self.device_id, wall)), wall, due)

    def draw(self, elapsed: float, banner: str) -> np.ndarray:
        """The frame ``elapsed`` seconds in, with ``banner`` burned in (BGR uint8)."""
        image = self._canvas
        np.copyto(image, self._picture)
        scale = self.width / 320
        if self.light:
            window = slice(0, self.width // 3)
            gain = 1.0 + self.light * math.sin(2 * math.pi * elapsed / 10)
            image[:, window] = cv2.convertScaleAbs(self._picture[:, window], alpha=gain)
        if self.pace:
            x = round((100 + self.pace * elapsed) * scale)
            y = round(150 * scale)
            cv2.circle(image, (x, y), round(18 * scale), (40, 60, 200), thickness=-1)
            body = (x - round(15 * scale), y + round(15 * scale))
            cv2.rectangle(
                image, body, (x + round(15 * scale), y + round(80 * scale)), (30, 30, 120), -1
            )
        frame = self._noise.applied(image) if self._noise is not None else image.copy()
        cv2.rectangle(frame, (0, 0), (self.width, self.BANNER_HEIGHT), (0, 0, 0), thickness=-1)
        cv2.putText(
            frame,
            banner,
            (6, self.BANNER_HEIGHT - 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.55,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        return frame

    def close(self) -> None:
        self._t0 = None
