"""What a simulated camera costs: CPU per frame it draws and per simulated minute it records.

A scenario replay runs one agent process per device on a shared clock at 60x or more, each
recording its ``PlanCamera`` (``simulators.plan_camera``) at 320x240, 2 fps, into its spool; on a
two-core machine the sum must stay well below the real time available, or honest classes get
recording gaps. This prints:

* the milliseconds of one ``draw`` of each view the plan camera uses (a live room, a printed
  photo, a covered lens), averaged over many frames;
* the CPU seconds the agent's own recorder (``edge_agent.recorder.Recorder``, libx264
  ultrafast, 100 kbit/s, a keyframe a second, the replay's 5 s segments) spends per simulated
  minute of a live camera on a ``VirtualClock`` (no waiting: all of it is drawing, encoding
  and the spool's bookkeeping). At 60x one camera has 1 s of real time per simulated minute.

Run: ``.venv/bin/python bench/camera_cost.py [--seconds 120]`` (a few seconds).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common.clock import VirtualClock
from edge_agent.recorder import Recorder
from edge_agent.spool import Spool
from simulators.cameras import CoveredCamera, StillSceneCamera
from simulators.plan import CameraPlan
from simulators.plan_camera import LIVE_LIGHT, LIVE_PACE, PlanCamera

T0 = datetime(2027, 3, 1, 1, 0, tzinfo=UTC)
W, H, FPS = 320, 240, 2.0
SEGMENT_S = 5.0  # as simulators.replay_stack records
DRAWS = 400


def draw_ms() -> dict[str, float]:
    """Milliseconds per drawn frame of each kind of view."""
    clock = VirtualClock(T0)
    live = StillSceneCamera(
        "bench", width=W, height=H, fps=FPS, clock=clock, pace=LIVE_PACE, light=LIVE_LIGHT
    )
    photo = StillSceneCamera("bench", width=W, height=H, fps=FPS, clock=clock)
    covered = CoveredCamera("bench", width=W, height=H, fps=FPS, clock=clock)
    out = {}
    for name, draw in (
        ("live room", lambda i: live.draw(i / FPS, "bench 2027-03-01 09:00:00")),
        ("printed photo", lambda i: photo.draw(i / FPS, "bench 2027-03-01 09:00:00")),
        ("covered lens", lambda i: covered.draw()),
    ):
        start = time.process_time()
        for index in range(DRAWS):
            draw(index)
        out[name] = (time.process_time() - start) / DRAWS * 1000
    return out


def recording_cpu_per_minute(seconds: float) -> float:
    """CPU seconds the agent's recorder spends per simulated minute of a live plan camera."""
    clock = VirtualClock(T0)
    camera = PlanCamera("bench", CameraPlan(scene_seed=3, width=W, height=H, fps=FPS), clock=clock)
    with tempfile.TemporaryDirectory() as folder:
        spool = Spool(Path(folder) / "spool")
        recorder = Recorder(
            camera,
            spool,
            clock,
            segment_seconds=SEGMENT_S,
            keyframe_interval_s=1.0,
            bitrate=100_000,
            session_id="bench",
            preset="ultrafast",
        )
        start = time.process_time()
        recorder.record_for(seconds)
        used = time.process_time() - start
        spool.close()
    return used / seconds * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="simulated seconds recorded")
    args = parser.parse_args()
    for name, ms in draw_ms().items():
        print(f"draw {name:14s} {ms:6.3f} ms per frame ({W}x{H})")
    cpu = recording_cpu_per_minute(args.seconds)
    print(
        f"recording a live camera: {cpu:.2f} s CPU per simulated minute "
        f"({W}x{H}, {FPS:g} fps, {SEGMENT_S:g} s segments, {args.seconds:g} simulated s)"
    )


if __name__ == "__main__":
    main()
