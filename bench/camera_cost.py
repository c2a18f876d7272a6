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
* with ``--idle-agents N``: what N idle ``sim_agent run`` processes (connected to a real
  Mosquitto through their ``ShapedLink``, each with its ``FakeModem``, no session) cost per
  agent at shared-clock speeds 1, 3 and 20 (% of a core, context switches per second), the
  extra per unit of speed, and what the replay's side of each device (its fake modem and link,
  in this process) costs; each also as a share of the recorder's CPU per real second at 60x.

Run: ``.venv/bin/python bench/camera_cost.py [--seconds 120] [--idle-agents 20]`` (a few
seconds; a minute and a half more with idle agents). Measured with 20 idle agents, 20 s per
speed, on the two-core box (others' work running too: ±0.03 points): before the agents and the
fake modems stopped polling, 0.77 / 0.90 / 2.04 % of a core at 1x / 3x / 20x (70-116 context
switches a second, +0.067 % per unit of speed) and 0.31-0.39 % per device on the replay's side;
after, 0.15-0.18 / 0.16-0.19 / 0.34-0.41 % (7-26 switches a second, +0.010-0.012 % per unit
of speed, mostly the heartbeat's modem queries) and 0.006-0.07 %.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from common.clock import VirtualClock
from edge_agent.recorder import Recorder
from edge_agent.spool import Spool
from simulators.broker import MosquittoBroker
from simulators.cameras import CoveredCamera, StillSceneCamera
from simulators.fake_modem import FakeModem
from simulators.netlink import ShapedLink
from simulators.plan import CameraPlan
from simulators.plan_camera import LIVE_LIGHT, LIVE_PACE, PlanCamera
from simulators.school import provision_quickly, wait_until
from simulators.sim_clock import ClockConductor, SharedClock

T0 = datetime(2027, 3, 1, 1, 0, tzinfo=UTC)
W, H, FPS = 320, 240, 2.0
SEGMENT_S = 5.0  # as simulators.replay_stack records
DRAWS = 400
IDLE_SPEEDS = (1.0, 3.0, 20.0)
TICKS = os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds ``pid`` has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of all of ``pid``'s threads so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


@contextlib.contextmanager
def idle_fleet(agents: int, folder: Path) -> Iterator[tuple[ClockConductor, list[int]]]:
    """``agents`` idle devices as a replay runs them: a shared clock, a real broker, each
    device's link and fake modem in this process and its ``sim_agent run`` process."""
    with contextlib.ExitStack() as stack:
        clock_path = folder / "clock.json"
        conductor = ClockConductor(clock_path, T0, 1.0)
        broker = MosquittoBroker(folder / "broker")
        links, processes = [], []
        for index in range(agents):
            link = stack.enter_context(
                ShapedLink(broker.host, broker.port, time_scale=lambda: conductor.speed)
            )
            links.append(link)
            modem = stack.enter_context(FakeModem(clock=SharedClock(clock_path)))
            with contextlib.redirect_stderr(io.StringIO()):  # its how-to-register advice
                device = provision_quickly(
                    folder / "devices",
                    f"idle-{index:03d}",
                    broker,
                    settings={
                        "camera": {"kind": "synthetic", "width": W, "height": H, "fps": FPS},
                        "broker": {"host": link.host, "port": link.port, "tls": False},
                        "modem": {"port": modem.path},
                    },
                )
            plan = device.root / "camera-plan.json"
            plan.write_text(CameraPlan(scene_seed=index).to_json())
            processes.append((device, plan))
        broker.start()
        stack.callback(broker.stop)
        popens = []
        for device, plan in processes:
            log_file = stack.enter_context((device.root / "agent.log").open("ab"))
            cmd = [sys.executable, "-m", "simulators.sim_agent", "run", "--config"]
            cmd += [str(device.config_path), "--clock", str(clock_path), "--camera-plan", str(plan)]
            popen = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
            stack.callback(popen.wait, 20)
            stack.callback(popen.terminate)
            popens.append(popen)
        if not wait_until(lambda: all(link.connections for link in links), timeout=120):
            raise RuntimeError("not every idle agent connected to the broker")
        yield conductor, [p.pid for p in popens]


def idle_costs(agents: int, window_s: float) -> dict[float, tuple[float, float, float]]:
    """Per speed: an idle agent's share of a core and context switches per second, and the
    share of a core this process (the replay's side: fake modems, links) spends per device."""
    out = {}
    with tempfile.TemporaryDirectory() as folder, idle_fleet(agents, Path(folder)) as fleet:
        conductor, pids = fleet
        time.sleep(10)  # start-up: imports, the modem's first queries, the first heartbeat
        for speed in IDLE_SPEEDS:
            conductor.set_speed(speed)
            time.sleep(2)
            cpu0 = sum(cpu_seconds(pid) for pid in pids)
            switches0 = sum(context_switches(pid) for pid in pids)
            own0, real0 = time.process_time(), time.monotonic()
            time.sleep(window_s)
            real = time.monotonic() - real0
            own = time.process_time() - own0
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
            switches = sum(context_switches(pid) for pid in pids) - switches0
            out[speed] = (cpu / real / agents, switches / real / agents, own / real / agents)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="simulated seconds recorded")
    parser.add_argument("--idle-agents", type=int, default=0, help="idle agent processes to run")
    parser.add_argument("--window", type=float, default=20.0, help="real seconds per speed")
    args = parser.parse_args()
    for name, ms in draw_ms().items():
        print(f"draw {name:14s} {ms:6.3f} ms per frame ({W}x{H})")
    cpu = recording_cpu_per_minute(args.seconds)
    print(
        f"recording a live camera: {cpu:.2f} s CPU per simulated minute "
        f"({W}x{H}, {FPS:g} fps, {SEGMENT_S:g} s segments, {args.seconds:g} simulated s)"
    )
    if args.idle_agents <= 0:
        return
    # At 60x a simulated minute is a real second: the recorder needs this share of a core.
    recording_share = cpu
    costs = idle_costs(args.idle_agents, args.window)
    for speed, (agent, switches, replay_side) in costs.items():
        print(
            f"idle agent at {speed:4g}x: {agent * 100:6.3f} % of a core "
            f"({agent / recording_share:.4f} of a 60x recording), {switches:7.1f} switches/s; "
            f"replay side per device {replay_side * 100:6.3f} % of a core"
        )
    low, high = IDLE_SPEEDS[0], IDLE_SPEEDS[-1]
    per_speed = (costs[high][0] - costs[low][0]) / (high - low)
    print(
        f"idle agent per unit of speed: {per_speed * 100:+.4f} % of a core "
        f"({args.idle_agents} agents, {args.window:g} real s per speed)"
    )


if __name__ == "__main__":
    main()
