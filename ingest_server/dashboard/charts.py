"""Bar charts as plain geometry, drawn by the templates as inline SVG.

The statistics page needs two small charts (sessions per month stacked by verdict, verified
trainee-hours per month). A charting library would mean JavaScript and a vendored bundle; the
geometry is a few lines of arithmetic, done here on the server, so the page shows its charts
without any script and prints as it looks. Coordinates are in a fixed ``viewBox``: the SVG
scales with its container, from a 320 px phone to a desktop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# About the width a chart gets on a desktop (half the page) and, scaled down, still readable
# on a 375 px phone: labels are drawn at 15 units, some 11 px there.
WIDTH = 480.0
HEIGHT = 300.0
# Room for the value axis' labels on the left and the category labels below.
LEFT, RIGHT, TOP, BOTTOM = 52.0, 10.0, 12.0, 38.0
# Past this many bars their labels ("2026-11") no longer fit side by side: they are slanted,
# with room below for them.
MAX_LEVEL_LABELS = 5
BOTTOM_SLANTED = 72.0
MAX_TICKS = 5


@dataclass(frozen=True)
class Segment:
    """One series' part of a bar: its box and the value it stands for."""

    series: str
    value: float
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Bar:
    """One category (a month): its label, where the label sits, its total and its segments
    stacked bottom up in the order of the chart's series."""

    label: str
    label_x: float
    total: float
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Tick:
    value: float
    y: float


@dataclass(frozen=True)
class BarChart:
    """A stacked bar chart in a ``width`` × ``height`` viewBox; ``baseline`` is the y of zero
    and ``plot_left``/``plot_right`` the value axis' span."""

    width: float
    height: float
    plot_left: float
    plot_right: float
    baseline: float
    top: float
    series: tuple[str, ...]
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    slanted_labels: bool

    @property
    def empty(self) -> bool:
        return not self.bars


def nice_step(largest: float, max_ticks: int = MAX_TICKS, *, whole: bool = False) -> float:
    """A step of 1, 2 or 5 times a power of ten such that ``largest`` needs at most
    ``max_ticks`` steps; with ``whole`` at least 1 (counts of sessions have no halves)."""
    if largest <= 0:
        return 1.0
    raw = largest / max_ticks
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(f * power for f in (1, 2, 5, 10) if f * power >= raw)
    return max(step, 1.0) if whole else step


def stacked_bars(
    categories: Sequence[Mapping[str, object]],
    label_key: str,
    series: Sequence[str],
    *,
    whole: bool = False,
    width: float = WIDTH,
    height: float = HEIGHT,
) -> BarChart:
    """Bars for ``categories`` (dicts holding ``label_key`` and a number under each name of
    ``series``), each stacked bottom up in ``series`` order; the value axis runs from zero to
    a round number at or above the tallest bar (``whole``: ticks at whole numbers only)."""
    totals = [sum(_value(c, s) for s in series) for c in categories]
    step = nice_step(max(totals, default=0.0), whole=whole)
    top_value = max(step, math.ceil(max(totals, default=0.0) / step) * step)
    plot_left, plot_right = LEFT, width - RIGHT
    slanted = len(categories) > MAX_LEVEL_LABELS
    baseline, top = height - (BOTTOM_SLANTED if slanted else BOTTOM), TOP
    scale = (baseline - top) / top_value
    slot = (plot_right - plot_left) / max(len(categories), 1)
    bar_width = min(slot * 0.6, 56.0)
    bars = []
    for index, (category, total) in enumerate(zip(categories, totals, strict=True)):
        centre = plot_left + slot * (index + 0.5)
        y = baseline
        segments = []
        for name in series:
            value = _value(category, name)
            tall = value * scale
            y -= tall
            segments.append(Segment(name, value, centre - bar_width / 2, y, bar_width, tall))
        bars.append(Bar(str(category.get(label_key, "")), centre, total, tuple(segments)))
    ticks = tuple(
        Tick(step * i, baseline - step * i * scale) for i in range(round(top_value / step) + 1)
    )
    return BarChart(
        width,
        height,
        plot_left,
        plot_right,
        baseline,
        top,
        tuple(series),
        tuple(bars),
        ticks,
        slanted,
    )


def _value(category: Mapping[str, object], name: str) -> float:
    value = category.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0.0
    return float(value)
