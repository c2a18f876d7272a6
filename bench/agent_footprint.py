"""The agent's footprint on a Pi-class box: memory and CPU while recording and uploading from
the synthetic source, and CPU while idle between sessions.

Goals (issue: the field agent): peak RSS ≤ 80 MB; idle CPU ≤ 2 % of a core. The agent runs as
``classcam-agent run`` against a real broker and the real server; its CPU is read from /proc.
"CPU excluding frame synthesis" subtracts the cost of drawing the synthetic frames (a real
camera hands them over for free), measured in this same run. Run with ``make bench``.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.clock import VirtualClock
from common.commands import CommandType
from edge_agent.camera import SyntheticCamera
from simulators.broker import MosquittoBroker
from simulators.harness import ServerProcess, provision_device
from simulators.operator import Operator

console = Console()
TICKS = os.sysconf("SC_CLK_TCK")
WIDTH, HEIGHT, FPS = 1280, 720, 15.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak resident), VmRSS, and its private (RssAnon) and shared-library (RssFile)
    parts, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


class MemorySampler(threading.Thread):
    """The kernel keeps only the peak of the whole RSS; sample the private part's peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_anon = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.peak_anon = max(self.peak_anon, memory_mb(self.pid)["RssAnon"])
            except (OSError, KeyError):
                return


def synthesis_cpu_per_frame() -> float:
    """CPU seconds to draw one synthetic 720p frame (what a real camera does not cost us)."""
    camera = SyntheticCamera("bench", width=WIDTH, height=HEIGHT, fps=FPS, clock=VirtualClock())
    camera.open()
    began = time.process_time()
    for _ in range(150):
        camera.read()
    return (time.process_time() - began) / 150


def main() -> int:
    per_frame = synthesis_cpu_per_frame()
    with tempfile.TemporaryDirectory(prefix="classcam-footprint-") as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work / "broker")
        broker.start()
        server = ServerProcess(work / "server", broker)
        agent = None
        try:
            server.cli("migrate")
            device = provision_device(
                work / "devices",
                "footprint-cam",
                broker,
                settings={"camera": {"width": WIDTH, "height": HEIGHT, "fps": FPS}},
            )
            server.register_device(device.device_id, device.public_key)
            server.start()
            operator = Operator(broker)
            # As in systemd/classcam-agent.service: two malloc arenas, not one per thread.
            agent = device.spawn("run", env={"MALLOC_ARENA_MAX": "2"})
            sampler = MemorySampler(agent.pid)
            sampler.start()
            operator.wait_for(
                lambda: any(s.device_id == device.device_id for s in operator.statuses), timeout=30
            )
            time.sleep(3)  # let start-up settle before measuring idle
            idle_s = 20.0
            cpu0 = cpu_seconds(agent.pid)
            time.sleep(idle_s)
            idle_cpu = (cpu_seconds(agent.pid) - cpu0) / idle_s

            console.print("recording 40 s of 720p15 and uploading three 10 s cuts meanwhile …")
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            opened = operator.send(device.device_id, CommandType.OPEN_SESSION, session_id="fp-1")
            started = operator.reply_to(opened.cmd_id).at
            from datetime import timedelta

            for n in range(3):
                time.sleep(12)
                cut = operator.send(
                    device.device_id,
                    CommandType.CUT,
                    session_id="fp-1",
                    start=started + timedelta(seconds=10 * n + 1),
                    end=started + timedelta(seconds=10 * n + 11),
                )
                operator.reply_to(cut.cmd_id, timeout=30)
            time.sleep(max(0.0, 40 - (time.monotonic() - t0)))
            closed = operator.send(device.device_id, CommandType.CLOSE_SESSION, session_id="fp-1")
            operator.reply_to(closed.cmd_id)
            busy_s = time.monotonic() - t0
            busy_cpu = (cpu_seconds(agent.pid) - cpu0) / busy_s
            memory = memory_mb(agent.pid)
            sampler.stop.set()
            operator.close()
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(30)
            server.stop()
            broker.stop()
    synth = per_frame * FPS
    table = Table(title="agent footprint (classcam-agent run, 720p15 synthetic camera)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    table.add_row("idle CPU between sessions", f"{idle_cpu * 100:.2f} % of a core", "≤ 2 %")
    table.add_row("CPU recording + uploading", f"{busy_cpu * 100:.1f} % of a core", "")
    table.add_row("  of which drawing synthetic frames", f"{synth * 100:.1f} % of a core", "")
    table.add_row(
        "[bold]CPU excluding frame synthesis",
        f"[bold]{(busy_cpu - synth) * 100:.1f} % of a core",
        "",
    )
    table.add_row("[bold]peak RSS (VmHWM)", f"[bold]{memory['VmHWM']:.1f} MB", "≤ 80 MB")
    table.add_row("  peak private memory (RssAnon, sampled)", f"{sampler.peak_anon:.1f} MB", "")
    table.add_row(
        "  shared libraries mapped at the end (RssFile)", f"{memory['RssFile']:.1f} MB", ""
    )
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
