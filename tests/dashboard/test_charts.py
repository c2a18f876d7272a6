"""The statistics page's bar charts as geometry (``dashboard.charts``): round steps on the value
axis, bars stacked in series order that reach exactly their total, and labels slanted once
they would no longer fit side by side."""

from __future__ import annotations

import pytest

from ingest_server.dashboard.charts import MAX_LEVEL_LABELS, nice_step, stacked_bars


@pytest.mark.parametrize(
    ("largest", "whole", "step"),
    [
        (0, False, 1.0),
        (3, True, 1.0),
        (2, False, 0.5),
        (2, True, 1.0),
        (7, True, 2.0),
        (11, True, 5.0),
        (37, False, 10.0),
        (1234.5, False, 500.0),
    ],
)
def test_the_value_axis_steps_by_one_two_or_five(largest: float, whole: bool, step: float) -> None:
    assert nice_step(largest, whole=whole) == pytest.approx(step)


def test_bars_stack_in_series_order_and_reach_their_total() -> None:
    months = [
        {"month": "2026-10", "verified": 2, "rejected": 1, "pending": 0},
        {"month": "2026-11", "verified": 2, "rejected": 1, "pending": 3},
    ]
    chart = stacked_bars(months, "month", ("verified", "rejected", "pending"), whole=True)
    assert [t.value for t in chart.ticks] == [0, 2, 4, 6]
    assert chart.ticks[-1].y == pytest.approx(chart.top)
    unit = (chart.baseline - chart.top) / 6
    for bar, month in zip(chart.bars, months, strict=True):
        assert bar.label == month["month"]
        assert [s.series for s in bar.segments] == ["verified", "rejected", "pending"]
        # Each segment sits on the one below it, from the baseline up to the total.
        bottom = chart.baseline
        for segment in bar.segments:
            assert segment.y + segment.height == pytest.approx(bottom)
            assert segment.height == pytest.approx(segment.value * unit)
            bottom = segment.y
        assert chart.baseline - bottom == pytest.approx(bar.total * unit)
        assert chart.plot_left < bar.label_x < chart.plot_right
    assert not chart.slanted_labels


def test_many_months_slant_their_labels_and_bad_values_count_as_zero() -> None:
    months = [{"m": f"2026-{i:02d}", "n": i} for i in range(1, MAX_LEVEL_LABELS + 2)]
    months[0]["n"] = -3  # never a negative bar
    chart = stacked_bars(months, "m", ("n",))
    assert chart.slanted_labels
    assert chart.bars[0].total == 0 and chart.bars[0].segments[0].height == 0
    assert stacked_bars([], "m", ("n",)).empty
