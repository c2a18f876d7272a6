"""Random windows: uniform over all placements, never overlapping, inside the session, a CSPRNG.

The statistical tests use a seeded ``random.Random`` so they are deterministic (no flaky
p-values in CI); what they check is the construction, which is the same whatever the source of
uniform integers. Separate tests show that the default source is ``SystemRandom``.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from scipy import stats

from ingest_server.rules.windows import Window, default_rng, draw_windows, due_windows

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2024, 5, 6, 1, 0, tzinfo=UTC)
DRAWS = 10_000
BINS = 20
P_MIN = 0.001


class CountingRandom(random.Random):
    """A seeded generator that counts the integers drawn from it (tests only)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.calls = 0

    def randrange(self, *args, **kwargs):
        self.calls += 1
        return super().randrange(*args, **kwargs)


def offsets(windows: list[Window], origin: datetime) -> list[float]:
    return [(w.start - origin).total_seconds() for w in windows]


def chi_square_against(samples: np.ndarray, dist) -> float:
    """p-value of ``samples`` against ``dist`` on BINS equiprobable bins."""
    edges = dist.ppf(np.linspace(0, 1, BINS + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    observed, _ = np.histogram(samples, bins=edges)
    return float(stats.chisquare(observed).pvalue)


def draw_many(count: int, session_s: float, length_s: float, seed: int) -> np.ndarray:
    """DRAWS draws as an array of start offsets (seconds), one row per draw."""
    rng = random.Random(seed)
    end = T0 + timedelta(seconds=session_s)
    return np.array(
        [
            offsets(draw_windows(T0, end, count=count, length_s=length_s, rng=rng), T0)
            for _ in range(DRAWS)
        ]
    )


def test_one_window_start_is_uniform():
    starts = draw_many(1, 3600, 60, seed=1)[:, 0]
    p = chi_square_against(starts, stats.uniform(loc=0, scale=3600 - 60))
    assert p > P_MIN, p
    assert starts.min() >= 0 and starts.max() <= 3540


def sequential_biased_draw(rng: random.Random, slack: float, count: int) -> list[float]:
    """A plausible wrong way: each point uniform after the previous one. Not uniform."""
    points, low = [], 0.0
    for _ in range(count):
        low = rng.uniform(low, slack)
        points.append(low)
    return points


def gaps_of(points: np.ndarray, slack: float) -> np.ndarray:
    """The count+1 gaps the sorted points cut [0, slack] into, one row per draw."""
    padded = np.hstack([np.zeros((len(points), 1)), points, np.full((len(points), 1), slack)])
    return np.diff(padded, axis=1)


SESSION_S, LENGTH_S, COUNT = 2 * 3600, 60, 3
SLACK = SESSION_S - COUNT * LENGTH_S


def test_three_windows_each_start_has_its_exact_order_statistic_distribution():
    # Joint uniformity means the points (start_i - i·L) are the order statistics of COUNT
    # uniforms on [0, SLACK]: the i-th (0-based) is SLACK · Beta(i + 1, COUNT - i).
    starts = draw_many(COUNT, SESSION_S, LENGTH_S, seed=2)
    points = starts - np.arange(COUNT) * LENGTH_S
    for i in range(COUNT):
        p = chi_square_against(points[:, i], stats.beta(i + 1, COUNT - i, scale=SLACK))
        assert p > P_MIN, (i, p)


def test_three_windows_gaps_are_exchangeable():
    # Uniform placements make the COUNT + 1 gaps (before the first window, between windows,
    # after the last) exchangeable, each SLACK · Beta(1, COUNT): the end of the class is as
    # likely to be checked as its start.
    starts = draw_many(COUNT, SESSION_S, LENGTH_S, seed=3)
    gaps = gaps_of(starts - np.arange(COUNT) * LENGTH_S, SLACK)
    for j in range(COUNT + 1):
        p = chi_square_against(gaps[:, j], stats.beta(1, COUNT, scale=SLACK))
        assert p > P_MIN, (j, p)


def test_the_gap_test_rejects_a_biased_construction():
    # The same test on the sequential construction fails by a mile: the test has power.
    rng = random.Random(4)
    points = np.array([sequential_biased_draw(rng, SLACK, COUNT) for _ in range(DRAWS)])
    gaps = gaps_of(points, SLACK)
    p = chi_square_against(gaps[:, COUNT], stats.beta(1, COUNT, scale=SLACK))
    assert p < 1e-6, p


def test_never_overlap_always_inside_over_many_sessions():
    rng = random.Random(5)
    for _ in range(3000):
        session_s = rng.uniform(0, 3 * 3600)
        length_s = rng.choice([1, 30, 60, 90.5])
        count = rng.randint(0, 6)
        margin_s = rng.choice([0, 0, 120])
        start = T0 + timedelta(seconds=rng.uniform(0, 86400))
        end = start + timedelta(seconds=session_s)
        windows = draw_windows(
            start, end, count=count, length_s=length_s, margin_s=margin_s, rng=rng
        )
        # As many as fit, up to count (±1 µs of rounding at an exact multiple).
        fits_low = max(0, int((session_s - 2 * margin_s - 1e-5) // length_s))
        fits_high = max(0, int((session_s - 2 * margin_s + 1e-5) // length_s))
        assert min(count, fits_low) <= len(windows) <= min(count, fits_high)
        for w in windows:
            assert w.length_s == pytest.approx(length_s, abs=1e-6)
            assert start + timedelta(seconds=margin_s) <= w.start
            assert w.end <= end - timedelta(seconds=margin_s)
        for a, b in itertools.pairwise(windows):
            assert a.end <= b.start


@pytest.mark.parametrize(
    ("session_s", "count", "length_s", "expected"),
    [
        (0, 3, 60, 0),
        (59.999999, 3, 60, 0),  # shorter than one window: none
        (60, 3, 60, 1),  # exactly one window: the whole session
        (119.999999, 3, 60, 1),
        (120, 3, 60, 2),
        (179, 3, 60, 2),  # fewer than asked: as many as fit
        (180, 3, 60, 3),  # exactly tiled
        (3600, 3, 60, 3),
        (3600, 0, 60, 0),
        (3600, 5, 60, 5),
    ],
)
def test_short_sessions_get_as_many_windows_as_fit(session_s, count, length_s, expected):
    end = T0 + timedelta(seconds=session_s)
    windows = draw_windows(T0, end, count=count, length_s=length_s, rng=random.Random(6))
    assert len(windows) == expected
    if expected and session_s == expected * length_s:
        assert windows[0].start == T0 and windows[-1].end == end


def test_margin_keeps_windows_off_the_edges():
    end = T0 + timedelta(minutes=10)
    for seed in range(200):
        windows = draw_windows(T0, end, count=3, margin_s=120, rng=random.Random(seed))
        assert len(windows) == 3
        assert windows[0].start >= T0 + timedelta(seconds=120)
        assert windows[-1].end <= end - timedelta(seconds=120)
    # A margin that leaves no room for a window leaves no windows.
    assert draw_windows(T0, end, margin_s=271, rng=random.Random(0)) == []


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (
            datetime(2024, 5, 6, 23, 30, tzinfo=SHANGHAI),
            datetime(2024, 5, 7, 0, 30, tzinfo=SHANGHAI),
        ),
        (datetime(2024, 5, 6, 23, 30, tzinfo=UTC), datetime(2024, 5, 7, 0, 30, tzinfo=UTC)),
        (datetime(2024, 12, 31, 23, 30), datetime(2025, 1, 1, 0, 30)),  # naive = UTC, new year
    ],
    ids=["shanghai", "utc", "naive-new-year"],
)
def test_sessions_crossing_midnight(start, end):
    start_utc = start.astimezone(UTC) if start.tzinfo else start.replace(tzinfo=UTC)
    end_utc = end.astimezone(UTC) if end.tzinfo else end.replace(tzinfo=UTC)
    crossed = 0
    for seed in range(300):
        windows = draw_windows(start, end, rng=random.Random(seed))
        assert len(windows) == 3
        for w in windows:
            assert w.start.tzinfo is UTC
            assert start_utc <= w.start and w.end <= end_utc
            assert w.length_s == 60
        local_days = {w.start.astimezone(start.tzinfo or UTC).date() for w in windows}
        crossed += len(local_days) > 1
    assert crossed > 0, "some draws straddle midnight"


def test_default_generator_is_the_os_csprng():
    assert isinstance(default_rng(), random.SystemRandom)


def test_default_draw_ignores_the_seedable_global_generator():
    end = T0 + timedelta(hours=2)
    random.seed(1234)
    first = draw_windows(T0, end)
    random.seed(1234)
    second = draw_windows(T0, end)
    # With the Mersenne Twister these would be equal; from SystemRandom a repeat has
    # probability ~1e-30.
    assert first != second


def test_default_draw_respects_the_invariants():
    end = T0 + timedelta(minutes=45)
    for _ in range(1000):
        windows = draw_windows(T0, end)
        assert len(windows) == 3
        assert windows[0].start >= T0
        assert windows[0].end <= windows[1].start and windows[1].end <= windows[2].start
        assert windows[2].end <= end


def test_an_injected_generator_is_the_only_source():
    end = T0 + timedelta(hours=1)
    rng = CountingRandom(42)
    windows = draw_windows(T0, end, count=3, rng=rng)
    assert rng.calls == 3
    assert windows == draw_windows(T0, end, count=3, rng=random.Random(42))


def test_due_windows_only_those_that_have_fully_passed():
    windows = draw_windows(T0, T0 + timedelta(hours=1), rng=random.Random(9))
    last_end = windows[-1].end
    assert due_windows(windows, last_end) == windows  # end == now: due
    assert due_windows(windows, last_end - timedelta(microseconds=1)) == windows[:2]
    assert due_windows(windows, windows[0].end - timedelta(seconds=1)) == []
    assert due_windows(reversed(windows), last_end.replace(tzinfo=None)) == windows  # naive UTC
    assert due_windows(windows, last_end.astimezone(SHANGHAI)) == windows


@pytest.mark.parametrize(
    "kwargs",
    [{"count": -1}, {"length_s": 0}, {"length_s": -60}, {"margin_s": -1}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        draw_windows(T0, T0 + timedelta(hours=1), **kwargs)


def test_session_ending_before_it_starts_is_an_error():
    with pytest.raises(ValueError):
        draw_windows(T0, T0 - timedelta(seconds=1))


def test_window_must_have_length():
    with pytest.raises(ValueError):
        Window(T0, T0)
