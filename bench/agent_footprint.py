"""The agent's footprint on a Pi-class box: memory and CPU while recording and uploading from
the synthetic source, and CPU while idle between sessions.

Goals (issue: the field agent): peak RSS ≤ 80 MB; idle CPU ≤ 2 % of a core. The agent runs as
``classcam-agent run`` against a real broker and the real server; its CPU is read from /proc.
"CPU excluding frame synthesis" subtracts the cost of drawing the synthetic frames (a real
camera hands them over for free), measured in this same run. Run with ``make bench``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from figures import Figure, report
from rich.console import Console
from rich.table import Table

from common.clock import VirtualClock
from common.commands import CommandType
from edge_agent.camera import SyntheticCamera
from simulators.broker import MosquittoBroker
from simulators.harness import ServerProcess, provision_device
from simulators.operator import Operator
from simulators.rtsp_server import RtspCameraServer

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


# The floor any Python agent on this stack pays: an interpreter with the libraries the agent
# loads for the IP-camera path (PyAV for the stream copy, paho, cryptography), doing nothing.
FLOOR = (
    "import av, paho.mqtt.client, cryptography.hazmat.primitives.asymmetric.ed25519, pathlib\n"
    "print(next(l for l in pathlib.Path('/proc/self/status').read_text().splitlines()"
    " if l.startswith('VmHWM')).split()[1])"
)


def library_floor_mb() -> float:
    """Peak RSS of a bare interpreter that imported the agent's libraries, in MB."""
    out = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def synthesis_cpu_per_frame() -> float:
    """CPU seconds to draw one synthetic 720p frame (what a real camera does not cost us)."""
    camera = SyntheticCamera("bench", width=WIDTH, height=HEIGHT, fps=FPS, clock=VirtualClock())
    camera.open()
    began = time.process_time()
    for _ in range(150):
        camera.read()
    return (time.process_time() - began) / 150


def measure(
    work: Path,
    broker: MosquittoBroker,
    server: ServerProcess,
    name: str,
    camera: dict[str, object],
    idle_s: float,
) -> dict[str, float]:
    """Run ``classcam-agent run`` with ``camera``: idle first, then a 40 s session with three
    10 s cuts uploaded while it records. CPU as a share of one core, memory in MB."""
    device = provision_device(work / "devices", name, broker, settings={"camera": camera})
    server.register_device(device.device_id, device.public_key)
    operator = Operator(broker)
    # As in systemd/classcam-agent.service: two malloc arenas, not one per thread.
    agent = device.spawn("run", env={"MALLOC_ARENA_MAX": "2"})
    try:
        sampler = MemorySampler(agent.pid)
        sampler.start()
        operator.wait_for(
            lambda: any(s.device_id == device.device_id for s in operator.statuses), timeout=30
        )
        time.sleep(3)  # let start-up settle before measuring idle
        idle_cpu = float("nan")
        if idle_s:
            cpu0 = cpu_seconds(agent.pid)
            time.sleep(idle_s)
            idle_cpu = (cpu_seconds(agent.pid) - cpu0) / idle_s
        console.print(f"{name}: recording 40 s and uploading three 10 s cuts meanwhile …")
        cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
        opened = operator.send(device.device_id, CommandType.OPEN_SESSION, session_id="fp-1")
        started = operator.reply_to(opened.cmd_id).at
        for n in range(3):
            time.sleep(12)
            cut = operator.send(
                device.device_id,
                CommandType.CUT,
                session_id="fp-1",
                start=started + timedelta(seconds=10 * n + 1),
                end=started + timedelta(seconds=10 * n + 11),
            )
            done = operator.reply_to(cut.cmd_id, timeout=30)
            if done.type.value != "cut_done":
                raise RuntimeError(f"{name}: cut failed: {done.data}")
        time.sleep(max(0.0, 40 - (time.monotonic() - t0)))
        closed = operator.send(device.device_id, CommandType.CLOSE_SESSION, session_id="fp-1")
        operator.reply_to(closed.cmd_id)
        busy_cpu = (cpu_seconds(agent.pid) - cpu0) / (time.monotonic() - t0)
        memory = memory_mb(agent.pid)
        sampler.stop.set()
        return {
            "idle_cpu": idle_cpu,
            "busy_cpu": busy_cpu,
            "hwm": memory["VmHWM"],
            "anon": sampler.peak_anon,
            "file": memory["RssFile"],
        }
    finally:
        operator.close()
        agent.terminate()
        agent.wait(30)


def main() -> int:
    per_frame = synthesis_cpu_per_frame()
    rtsp_missing = RtspCameraServer.available()
    with tempfile.TemporaryDirectory(prefix="classcam-footprint-") as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work / "broker")
        broker.start()
        server = ServerProcess(work / "server", broker)
        camera_server = None
        try:
            server.cli("migrate")
            server.start()
            synthetic = measure(
                work,
                broker,
                server,
                "footprint-synthetic",
                {"width": WIDTH, "height": HEIGHT, "fps": FPS},
                idle_s=20.0,
            )
            rtsp = None
            if rtsp_missing is None:
                camera_server = RtspCameraServer(
                    width=WIDTH, height=HEIGHT, fps=int(FPS), bitrate_kbps=1000
                )
                camera_server.start()
                rtsp = measure(
                    work,
                    broker,
                    server,
                    "footprint-rtsp",
                    {"kind": "rtsp", "url": camera_server.url, "fps": FPS},
                    idle_s=0,
                )
        finally:
            if camera_server is not None:
                camera_server.stop()
            server.stop()
            broker.stop()
    synth = per_frame * FPS
    table = Table(title="agent footprint (classcam-agent run, 720p15)")
    table.add_column("figure")
    table.add_column("synthetic camera, x264 here", justify="right")
    table.add_column("IP camera, stream copy", justify="right")
    table.add_column("goal", justify="right")

    def col(values: dict[str, float] | None, key: str, fmt: str) -> str:
        return fmt.format(values[key]) if values else (rtsp_missing or "n/a")[:40]

    table.add_row(
        "idle CPU between sessions", f"{synthetic['idle_cpu'] * 100:.2f} % of a core", "", "≤ 2 %"
    )
    table.add_row(
        "CPU recording + uploading",
        f"{synthetic['busy_cpu'] * 100:.1f} %",
        col(rtsp, "busy_cpu", "{:.1%}"),
        "",
    )
    table.add_row("  of which drawing synthetic frames", f"{synth * 100:.1f} %", "", "")
    table.add_row(
        "[bold]CPU excluding frame synthesis",
        f"[bold]{(synthetic['busy_cpu'] - synth) * 100:.1f} %",
        col(rtsp, "busy_cpu", "{:.1%}"),
        "",
    )
    table.add_row(
        "[bold]peak RSS (VmHWM)",
        f"[bold]{synthetic['hwm']:.1f} MB",
        col(rtsp, "hwm", "{:.1f} MB"),
        "≤ 80 MB",
    )
    table.add_row(
        "  peak private memory (RssAnon, sampled)",
        f"{synthetic['anon']:.1f} MB",
        col(rtsp, "anon", "{:.1f} MB"),
        "",
    )
    table.add_row(
        "  shared libraries mapped (RssFile)",
        f"{synthetic['file']:.1f} MB",
        col(rtsp, "file", "{:.1f} MB"),
        "",
    )
    console.print(table)
    command = ".venv/bin/python bench/agent_footprint.py"
    figures = [
        Figure(
            "agent_idle_cpu",
            "agent idle CPU (between sessions)",
            synthetic["idle_cpu"] * 100,
            "% core",
            None,
            "",
            "<=",
            2.0,
            "measured",
            command,
        )
    ]
    if rtsp is not None:
        figures.insert(
            0,
            Figure(
                "agent_rss_ipcam",
                "agent peak RSS, IP camera (stream copy)",
                rtsp["hwm"],
                "MB",
                library_floor_mb(),
                "bare python + av, paho",
                "<=",
                80.0,
                "measured",
                command,
            ),
        )
    report("agent footprint: issue 11 goals", figures, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
