"""``make demo``: a morning in four classrooms, replayed on this machine.

It replays ``scenarios/demo-day.yaml`` (``classcam-sim replay``): its own Mosquitto, the server
on SQLite and a filesystem evidence store, one real agent process per classroom with a
synthetic camera, a fake 4G modem and a shaped link, the lecturers' photos over HTTP, all on
one accelerated clock. It prints a table of every session (expected vs actual verdict and
reasons), the API addresses where each session's evidence can be seen, and keeps the broker and
the server up until Ctrl-C. ``DEMO_EXIT=1`` ends after the table (scripts, CI).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from simulators.broker import mosquitto_available
from simulators.replay import (
    evidence_lines,
    interrupt_on_sigterm,
    load_plan,
    quiet_logging,
    run_replay,
)

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "demo-day.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="classcam-sim demo", description=__doc__)
    parser.add_argument("--scenario", type=Path, default=SCENARIO)
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"))
    parser.add_argument("--speed", type=float, help="default: the scenario's")
    parser.add_argument("--report", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    quiet_logging()
    interrupt_on_sigterm()
    console = Console()
    if not mosquitto_available():
        console.print(
            "[red]the demo needs Mosquitto: `make system-deps` (or apt-get install mosquitto)"
        )
        return 2
    exit_after_table = os.environ.get("DEMO_EXIT", "") not in ("", "0")
    plan = load_plan(args.scenario, console)
    try:
        result = run_replay(
            plan,
            workdir=args.workdir,
            speed=args.speed,
            report=args.report,
            console=console,
            keep_serving=not exit_after_table,
        )
    except KeyboardInterrupt:
        console.print("interrupted; everything the demo started is stopped")
        return 130
    if exit_after_table:
        console.print("evidence (while a server runs; `make demo` without DEMO_EXIT keeps it up):")
        for line in evidence_lines(result):
            console.print(line, soft_wrap=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
