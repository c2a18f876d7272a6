"""One table format for the figures issue 11 sets goals for, shared by the benches.

Each figure is a measured value, the baseline measured in the same run (a bare paho
subscriber, ``shutil.copyfile``, the clip's own size, ...), their ratio, and the goal with
whether it is met. A bench prints its figures with ``report`` and appends them to
``var/bench/figures.jsonl``; ``bench/summary.py``, the last step of ``make bench``, prints every
figure of the run in one table (a figure no bench reported shows as not measured).
Ratios only mean something within one run: the machine's load moves both sides together.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

FIGURES_FILE = Path(os.environ.get("CLASSCAM_BENCH_FIGURES", "var/bench/figures.jsonl"))

COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Figure:
    key: str  # stable name the summary orders by (see summary.ORDER)
    name: str
    measured: float
    unit: str
    baseline: float | None  # in ``unit``; None where the goal is absolute
    baseline_name: str
    goal_op: str  # ">=", "<=" or "<"
    goal: float
    goal_on: str  # "ratio" or "measured": which of the two the goal is about
    command: str

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.measured / self.baseline

    @property
    def met(self) -> bool | None:
        value = self.ratio if self.goal_on == "ratio" else self.measured
        if value is None:
            return None
        return COMPARE[self.goal_op](value, self.goal)


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def cells(figure: Figure) -> list[str]:
    """The row: figure, measured, baseline, ratio, goal, met?, command."""
    goal_unit = "" if figure.goal_on == "ratio" else figure.unit
    goal = f"{figure.goal_op} {_num(figure.goal, goal_unit)}"
    if figure.goal_on == "ratio":
        goal = f"ratio {goal}"
    met = {True: "[green]met", False: "[red]not met", None: "?"}[figure.met]
    baseline = _num(figure.baseline, figure.unit)
    if figure.baseline is not None:
        baseline = f"{baseline} ({figure.baseline_name})"
    ratio = "—" if figure.ratio is None else f"{figure.ratio:.2f}"
    return [
        figure.name,
        _num(figure.measured, figure.unit),
        baseline,
        ratio,
        goal,
        met,
        figure.command,
    ]


def table(title: str, figures: list[Figure]) -> Table:
    out = Table(title=title)
    for column in ("figure", "measured", "baseline (same run)", "ratio", "goal", "met?"):
        out.add_column(column, justify="left" if column == "figure" else "right")
    out.add_column("command", overflow="fold")
    for figure in figures:
        out.add_row(*cells(figure))
    return out


def report(title: str, figures: list[Figure], console: Console | None = None) -> None:
    """Print ``figures`` as one table and append them to the run's figures file."""
    # Wide enough for the command column even when the output is a pipe or a log.
    Console(width=max(170, console.width if console else 0)).print(table(title, figures))
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES_FILE.open("a") as out:
        for figure in figures:
            out.write(json.dumps(asdict(figure)) + "\n")


def load(path: Path = FIGURES_FILE) -> list[Figure]:
    if not path.exists():
        return []
    return [Figure(**json.loads(line)) for line in path.read_text().splitlines() if line]
