"""The fleet replay: ``scenarios/fleet-100.yaml`` (100 agent processes, one class each, twenty
recording at once) replayed on this machine, every session checked against its expectation.

Issue 9 asks that the fleet replays in ``make bench`` with its wall time and per-session
outcomes, every session as expected. This runs ``classcam-sim replay`` as a subprocess (its
live view and table go to ``var/bench/fleet-100.log``, its JSON report beside it), samples the
resident memory of the processes it starts with psutil, and prints:

* wall time and simulated span, and against the speed asked: how much of the wall time the
  clock ran at speed (the rest is starting 100 devices, jumps cost nothing, settling verdicts),
  i.e. the replay's overhead over a perfect ``span / speed``;
* peak RSS of the agents, the server, the broker and the replay, and of agents + server;
* CPU seconds of the whole replay (every process it started, reaped), per simulated
  class-minute, against the agent's recorder alone per simulated minute measured in this run
  (``bench/camera_cost.py``): what a recorded minute costs the fleet, all else included;
* a summary per behaviour and every mismatch with its expected and actual reasons (the full
  table is in the log), and exits 1 on any mismatch or a timeout.

When sessions mismatch, read the server's log in the workdir and the agents' under
``WORKDIR/devices/*/agent.log`` before touching an expectation.

Run: ``.venv/bin/python bench/fleet_replay.py [--speed X] [--timeout S]`` (~12 minutes).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from camera_cost import recording_cpu_per_minute

from simulators.behaviours import plan_replay
from simulators.plan import ReplayPlan
from simulators.scenario_load import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_S = 1.0
# Device processes run this much nicer than the server (see ``MemorySampler``).
AGENT_NICE = 19
KINDS = ("agents", "server", "broker", "replay")


def kind_of(cmdline: list[str]) -> str:
    """Which part of the replay a process is, from its command line."""
    text = " ".join(cmdline)
    if "simulators.sim_agent" in text:
        return "agents"
    if "sim_server" in text or "ingest_server" in text:
        return "server"
    if "mosquitto" in text:
        return "broker"
    return "replay"


class MemorySampler(threading.Thread):
    """Every ``SAMPLE_S``, the RSS of the replay and everything below it, summed per kind;
    keeps the peaks (the kernel keeps only one process's own peak).

    It also renices every device process it sees to ``agent_nice``. In the field each camera
    has its own CPU; here a hundred agent processes share two cores with the server, and the
    scheduler's fairness per process gives the server a hundredth of the CPU whenever they are
    all runnable: in a first fleet run at equal priority the server waited 105 s on the run
    queue for 4 s of running, answered no API call within 30 s and read heartbeats sent ten
    simulated minutes earlier, so every camera looked offline (``camera_offline``)."""

    def __init__(self, root_pid: int, agent_nice: int = AGENT_NICE) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.agent_nice = agent_nice
        self.peaks = dict.fromkeys(KINDS, 0.0)
        self.peak_agents_server = 0.0
        self.most_agents = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        totals = dict.fromkeys(KINDS, 0.0)
        agents = 0
        for process in processes:
            try:
                kind = kind_of(process.cmdline())
                totals[kind] += process.memory_info().rss / 2**20
                if (
                    kind == "agents"
                    and "run" in process.cmdline()  # not the stills: start() waits on them
                    and process.nice() < self.agent_nice
                ):
                    process.nice(self.agent_nice)
            except psutil.Error:
                continue  # it ended between the listing and the reading
            agents += kind == "agents"
        for kind, mb in totals.items():
            self.peaks[kind] = max(self.peaks[kind], mb)
        self.peak_agents_server = max(self.peak_agents_server, totals["agents"] + totals["server"])
        self.most_agents = max(self.most_agents, agents)


def children_cpu_s() -> float:
    """CPU seconds of every reaped descendant so far (the replay reaps what it starts)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


def class_minutes(plan: ReplayPlan) -> float:
    """Simulated minutes of class over all sessions: what the cameras record."""
    return sum((s.end - s.start).total_seconds() for s in plan.sessions) / 60


def run_replay(
    args: argparse.Namespace, report: Path, log: Path
) -> tuple[int, float, MemorySampler]:
    """``classcam-sim replay`` as a subprocess; its exit status, the CPU seconds of all it ran,
    and the memory it was seen to use."""
    command = [sys.executable, "-m", "simulators.cli", "replay", str(args.scenario)]
    command += ["--report", str(report), "--workdir", str(args.workdir)]
    command += ["--timeout", str(args.timeout)]
    if args.speed:
        command += ["--speed", str(args.speed)]
    cpu_before = children_cpu_s()
    with log.open("w") as out:
        replay = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        sampler = MemorySampler(replay.pid, args.agent_nice)
        sampler.start()
        try:
            status = replay.wait()
        except KeyboardInterrupt:
            replay.terminate()  # the replay stops everything it started on SIGTERM
            replay.wait()
            raise
        finally:
            sampler.done.set()
            sampler.join()
    return status, children_cpu_s() - cpu_before, sampler


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def print_outcomes(sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A line per behaviour (sessions, matched), every non-honest session, every mismatch."""
    by_behaviour: Counter[str] = Counter()
    matched: Counter[str] = Counter()
    for s in sessions:
        key = ", ".join(b.split(":")[0] for b in s["behaviours"]) or "honest"
        by_behaviour[key] += 1
        matched[key] += bool(s["match"])
    print("per behaviour (sessions matched / sessions):")
    for key, count in sorted(by_behaviour.items(), key=lambda kv: -kv[1]):
        print(f"  {key:32s} {matched[key]:3d} / {count:3d}")
    mismatches = [s for s in sessions if not s["match"]]
    shown = [s for s in sessions if not s["match"] or s["behaviours"] not in ([], ["honest"])]
    if shown:
        print("sessions not honest, and every mismatch:")
    for s in shown:
        mark = "✓" if s["match"] else "✗"
        expected, actual = s["expected"], s["actual"]
        print(
            f"  {mark} {s['session_id']:10s} {', '.join(s['behaviours']):28.28s} "
            f"expected {expected['verdict']} {expected['reasons']}  "
            f"actual {actual['verdict']} {actual['reasons']}  "
            f"clips {s['clips']} photos {s['photos']}"
        )
    return mismatches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios/fleet-100.yaml")
    parser.add_argument("--speed", type=float, help="default: the scenario's")
    parser.add_argument("--workdir", type=Path, default=ROOT / "var/bench/fleet-100")
    parser.add_argument("--timeout", type=float, default=1800.0, help="real seconds at most")
    parser.add_argument(
        "--agent-nice", type=int, default=AGENT_NICE, help="niceness of the device processes"
    )
    args = parser.parse_args()
    plan = plan_replay(load_scenario(args.scenario))
    speed = args.speed or plan.speed
    report = args.workdir.parent / f"{args.workdir.name}.json"
    log = args.workdir.parent / f"{args.workdir.name}.log"
    args.workdir.parent.mkdir(parents=True, exist_ok=True)

    baseline = recording_cpu_per_minute(60.0)
    print(
        f"{plan.name}: {len(plan.devices)} devices, {len(plan.sessions)} sessions, "
        f"{class_minutes(plan):.0f} class-minutes, speed {speed:g}, device processes at nice "
        f"{args.agent_nice}; log {log}"
    )
    status, cpu_s, sampler = run_replay(args, report, log)
    peaks = sampler.peaks
    print(
        f"peak RSS: agents {peaks['agents']:.0f} MB ({sampler.most_agents} processes), server "
        f"{peaks['server']:.0f} MB, broker {peaks['broker']:.0f} MB, replay "
        f"{peaks['replay']:.0f} MB; agents + server {sampler.peak_agents_server / 1024:.2f} GB"
    )
    if not report.exists():
        print(f"CPU {cpu_s:.0f} s; the replay wrote no report (exit {status}); see {log}")
        return 1
    data = json.loads(report.read_text())

    wall = float(data["wall_s"])
    start, end = parse_time(data["simulated"]["start"]), parse_time(data["simulated"]["end"])
    span = (end - start).total_seconds()
    jumped = sum(
        (parse_time(j["to"]) - parse_time(j["from"])).total_seconds() for j in data["jumps"]
    )
    at_speed_real = (span - jumped) / speed  # real seconds the clock needs at speed
    print(
        f"wall {wall:.0f} s for {span / 60:.1f} simulated min ({len(data['jumps'])} jump(s) over "
        f"{jumped / 60:.1f} min): {span / wall:.1f} simulated s per real s; the clock at speed "
        f"{speed:g} needs {at_speed_real:.0f} s, wall / that = {wall / at_speed_real:.2f}"
    )
    per_minute = cpu_s / class_minutes(plan)
    print(
        f"CPU {cpu_s:.0f} s ({cpu_s / wall:.2f} cores over the wall time); "
        f"{per_minute:.2f} s per simulated class-minute, vs the recorder alone "
        f"{baseline:.2f} s per simulated minute: x{per_minute / baseline:.1f}"
    )
    mismatches = print_outcomes(data["sessions"])
    print(
        f"{data['matched']} / {len(data['sessions'])} sessions as expected"
        + (", TIMED OUT" if data["timed_out"] else "")
        + f" (replay exit {status}; report {report})"
    )
    if mismatches:
        print(f"mismatches: read {args.workdir}/server and {args.workdir}/devices/*/agent.log")
    return 0 if status == 0 and not mismatches and not data["timed_out"] else 1


if __name__ == "__main__":
    sys.exit(main())
