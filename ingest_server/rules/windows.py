"""The random spot-check windows of a session (DESIGN.md §1.3), drawn by the server.

Because the device records everything and nobody knows which minutes will be asked for, the
whole class must be real. That holds only if the draw is unpredictable (a CSPRNG, never the
seedable Mersenne Twister of ``random``) and uniform: no part of the class may be safer to skip
than another. Windows are asked for only after they have passed (``due_windows``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from common.clock import to_utc

_US = 1_000_000


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """A spot-check window ``[start, end]`` in server UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError("a window must end after it starts")

    @property
    def length_s(self) -> float:
        """The window's length in seconds."""
        return (self.end - self.start).total_seconds()


def default_rng() -> random.SystemRandom:
    """The generator ``draw_windows`` uses unless told otherwise: the OS CSPRNG."""
    return random.SystemRandom()


def _micros(seconds: float) -> int:
    return round(seconds * _US)


def draw_windows(
    session_start: datetime,
    session_end: datetime,
    *,
    count: int = 3,
    length_s: float = 60,
    rng: random.Random | None = None,
    margin_s: float = 0,
) -> list[Window]:
    """Draw ``count`` non-overlapping windows of ``length_s`` inside the session, uniformly.

    The windows lie in ``[session_start + margin_s, session_end - margin_s]`` and are returned
    sorted, in UTC (naive datetimes are taken as UTC). Every placement of ``count``
    non-overlapping windows is equally likely: with ``T`` the usable length and ``L`` the window
    length, ``count`` points are drawn uniformly in ``[0, T - count·L]`` and sorted, and the
    i-th window starts at the i-th point plus ``i·L`` ("stars and bars": a bijection between
    sorted points and placements, so uniform points give uniform placements, and adjacent windows
    can touch but never overlap). Points are whole microseconds, datetime's own resolution, so
    the arithmetic is exact.

    A session too short for ``count`` windows gets as many as fit (``T // L``), none if it is
    shorter than one window: a short session is judged by its duration, not by asking for
    windows it cannot have.

    ``rng`` is for tests only; by default the draw comes from ``random.SystemRandom``.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    if length_s <= 0:
        raise ValueError("length_s must be positive")
    if margin_s < 0:
        raise ValueError("margin_s must not be negative")
    start, end = to_utc(session_start), to_utc(session_end)
    if end < start:
        raise ValueError("the session ends before it starts")
    rng = rng if rng is not None else default_rng()

    length_us = _micros(length_s)
    margin_us = _micros(margin_s)
    usable_us = (end - start) // timedelta(microseconds=1) - 2 * margin_us
    fits = max(0, usable_us // length_us)
    n = min(count, fits)
    if n == 0:
        return []
    slack_us = usable_us - n * length_us
    points = sorted(rng.randrange(slack_us + 1) for _ in range(n))
    origin = start + timedelta(microseconds=margin_us)
    windows = []
    for i, point in enumerate(points):
        first = origin + timedelta(microseconds=point + i * length_us)
        windows.append(Window(first, first + timedelta(microseconds=length_us)))
    return windows


def due_windows(windows: Iterable[Window], now: datetime) -> list[Window]:
    """The windows that have fully passed at ``now`` (``end <= now``), in order.

    Only these may be requested from the device or shown to anyone: revealing a window before
    it has passed would tell the classroom which minutes matter. Mind that revealing the last
    one while the session still runs tells it that the rest of the class is unchecked; the
    verdict therefore says nothing about windows until the session has ended.
    """
    now = to_utc(now)
    return sorted(w for w in windows if w.end <= now)
