"""The camera of a replayed device: what its ``CameraPlan`` says it sees, moment by moment.

Outside the plan's trouble periods it films a live classroom (``plan.scene_seed``, the scene its
reference still shows: a figure leaning to and fro, a window's light swinging), which passes
the server's video checks. During a period it gives what the period names, switching at the
period's bounds even mid-session, since every frame asks the plan:

* ``covered``: near-black frames (``CoveredCamera``);
* ``frozen``: the same classroom as a printed photo, nothing moves but the noise and the
  burned-in clock (``StillSceneCamera`` with ``pace=0``, ``light=0``);
* ``moved``: a live view of another scene (``period.scene_seed``);
* ``unplugged``: the camera is gone the way a USB camera that vanished is: ``read`` raises
  ``CameraError`` and so does every ``open`` until the period ends. The agent's session recorder
  reports ``camera_lost``, reopens through its camera factory with backoff and reports the
  ``recording_gap`` once frames flow again.

The plan's times are true simulated time: ``plan_clock`` (the shared clock without the device's
skew) reads them; frames are stamped and paced by ``clock``, the device's own clock.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np

from common.clock import Clock
from edge_agent.camera import Frame, banner_text
from edge_agent.errors import CameraError
from simulators.cameras import CoveredCamera, StillSceneCamera
from simulators.plan import CameraPeriod, CameraPlan

# A live room: a figure leaning at this many px/s (of a 320 px wide picture), a window's light
# swinging by this share; both well inside the frozen check's "live" side
# (bench/frozen_margin.py) and small beside what tells one classroom from another.
LIVE_PACE = 2.0
LIVE_LIGHT = 0.05
# The figure leans across for this many seconds, then back: it never leaves the picture.
LEAN_SWING_S = 90.0


def lean_elapsed(elapsed: float) -> float:
    """``elapsed`` folded into a to-and-fro of ``LEAN_SWING_S``: where a live scene's figure
    stands after that long (a triangle wave, so it moves every second of a long class)."""
    phase = math.fmod(elapsed, 2 * LEAN_SWING_S)
    return phase if phase < LEAN_SWING_S else 2 * LEAN_SWING_S - phase


class PlanCamera:
    """A ``CameraSource`` that films what ``plan`` says at each moment of ``plan_clock``."""

    def __init__(
        self,
        device_id: str,
        plan: CameraPlan,
        *,
        clock: Clock,
        plan_clock: Clock | None = None,
        noise: int = 3,
    ) -> None:
        self.device_id = device_id
        self.name = f"plan:{device_id}"
        self.plan = plan
        self.width, self.height, self.fps = plan.width, plan.height, plan.fps
        self.clock = clock
        self.plan_clock = plan_clock or clock
        self.noise = noise
        self._views: dict[tuple[str, int], StillSceneCamera | CoveredCamera] = {}
        self._t0: float | None = None
        self._slot = 0
        # Every view the plan needs, made now: one made mid-class would stall the frames.
        self._view("live", plan.scene_seed)
        for period in plan.periods:
            self._view(*self._view_key(period))

    def trouble_now(self) -> CameraPeriod | None:
        """The plan's period in force now (true simulated time), if any."""
        return self.plan.trouble_at(self.plan_clock.now())

    def open(self) -> None:
        """Start the frame clock; an unplugged camera cannot be opened."""
        period = self.trouble_now()
        if period is not None and period.trouble == "unplugged":
            raise CameraError(self.name, "device not found")
        self._t0 = self.clock.monotonic()
        self._slot = 0

    def read(self) -> Frame:
        """Wait for the next frame slot on the clock, then draw what the plan shows now. A
        late reader gets the frame now and skips the slots it missed, as a sensor drops frames."""
        if self._t0 is None:
            raise CameraError(self.name, "read before open")
        due = self._t0 + self._slot / self.fps
        if due > self.clock.monotonic():
            self.clock.sleep(due - self.clock.monotonic())
        mono = self.clock.monotonic()
        self._slot = math.floor((mono - self._t0) * self.fps + 1e-6) + 1
        period = self.trouble_now()
        if period is not None and period.trouble == "unplugged":
            self._t0 = None  # a vanished USB camera's handle stays dead: reopen to go on
            raise CameraError(self.name, "device disappeared")
        wall = self.clock.now()
        return Frame(self._draw(period, mono - self._t0, wall), wall, mono)

    def close(self) -> None:
        """Stop; a later ``open`` restarts the frame clock."""
        self._t0 = None

    def _view_key(self, period: CameraPeriod | None) -> tuple[str, int]:
        """Which picture ``period`` (None: no trouble) shows: its kind and scene."""
        if period is None or period.trouble == "unplugged":
            return "live", self.plan.scene_seed
        if period.trouble == "moved":
            moved = period.scene_seed
            return "live", moved if moved is not None else self.plan.scene_seed + 1
        return period.trouble, self.plan.scene_seed

    def _draw(self, period: CameraPeriod | None, elapsed: float, wall: datetime) -> np.ndarray:
        view = self._view(*self._view_key(period))
        if isinstance(view, CoveredCamera):
            return view.draw()
        scene_elapsed = 0.0 if not view.pace else lean_elapsed(elapsed)
        return view.draw(scene_elapsed, banner_text(self.device_id, wall))

    def _view(self, kind: str, seed: int) -> StillSceneCamera | CoveredCamera:
        """The drawer of one kind of picture (live, frozen or covered), made once."""
        key = (kind, seed)
        if key not in self._views:
            w, h, fps = self.width, self.height, self.fps
            if kind == "covered":
                self._views[key] = CoveredCamera(
                    self.device_id, width=w, height=h, fps=fps, clock=self.clock
                )
            else:
                live = kind == "live"
                self._views[key] = StillSceneCamera(
                    self.device_id,
                    clock=self.clock,
                    noise=self.noise,
                    pace=LIVE_PACE if live else 0.0,
                    light=LIVE_LIGHT if live else 0.0,
                    scene_seed=seed,
                    width=w,
                    height=h,
                    fps=fps,
                )
        return self._views[key]
