"""``classcam-sim check SCENARIO...``: read scenario files without replaying them.

For ops staff editing a scenario: every problem with its line and field, or a short summary of
what the file would replay. Exit 1 if any file has a problem.
"""

from __future__ import annotations

import argparse
from collections import Counter

from rich.console import Console
from rich.markup import escape

from simulators.scenario import Scenario, ScenarioError
from simulators.scenario_load import load_scenario


def summary(scenario: Scenario) -> list[str]:
    """A few lines saying what the scenario replays."""
    zone = scenario.zone
    starts = sorted(scenario.session_start(s) for s in scenario.sessions)
    ends = sorted(scenario.session_end(s) for s in scenario.sessions)
    verdicts = Counter(s.expect.verdict for s in scenario.sessions)
    behaviours = Counter(b.name for s in scenario.sessions for b in s.all_behaviours())
    first, last = starts[0].astimezone(zone), ends[-1].astimezone(zone)
    return [
        f"{scenario.date} {scenario.timezone}: {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M},"
        f" speed {scenario.speed:g}",
        f"{len(scenario.classrooms)} classrooms, {len(scenario.devices)} devices,"
        f" {len(scenario.lecturers)} lecturers, {len(scenario.sessions)} sessions",
        "expected: " + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())),
        "behaviours: " + ", ".join(f"{name} ×{n}" for name, n in sorted(behaviours.items())),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="classcam-sim check",
        description="Check scenario files: every problem with its line and field, or a summary.",
    )
    parser.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="a scenario YAML file")
    args = parser.parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)  # one problem, one line (grep-able)
    failed = 0
    for path in args.scenarios:
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            failed += 1
            count = len(exc.problems)
            console.print(f"[red]✗[/] [bold]{escape(path)}[/]: {count} problem(s)")
            for problem in exc.problems:
                console.print(f"  {escape(str(problem))}")
            continue
        console.print(f"[green]✓[/] [bold]{escape(path)}[/]: {escape(scenario.name)}")
        for line in summary(scenario):
            console.print(f"  {escape(line)}")
    return 1 if failed else 0
