"""Cameras with a problem, behind the same ``CameraSource`` contract as the real ones."""

from __future__ import annotations

import numpy as np

from common.clock import Clock
from edge_agent.camera import Frame


class CoveredCamera:
    """A camera whose lens is covered (or that was unplugged from its light): near-black
    frames with a little sensor noise, at the real pace."""

    def __init__(
        self, device_id: str, *, width: int, height: int, fps: float, clock: Clock, seed: int = 0
    ) -> None:
        self.name = f"covered:{device_id}"
        self.width, self.height, self.fps = width, height, fps
        self.clock = clock
        self._rng = np.random.default_rng(seed)
        self._next: float | None = None

    def open(self) -> None:
        self._next = self.clock.monotonic()

    def read(self) -> Frame:
        assert self._next is not None, "open() first"
        wait = self._next - self.clock.monotonic()
        if wait > 0:
            self.clock.sleep(wait)
        self._next += 1.0 / self.fps
        noise = self._rng.integers(0, 6, (self.height, self.width, 3), dtype=np.uint8)
        return Frame(image=noise, wall=self.clock.now(), mono=self.clock.monotonic())

    def close(self) -> None:
        self._next = None
