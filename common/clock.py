"""Injected time, so tests and the simulator can run faster than the wall clock (STYLE.md).

Everything that asks the time or waits takes a ``Clock``. ``SystemClock`` is real time;
``VirtualClock`` only moves when something sleeps on it, so a 30 s recording can be made in
the time it takes to encode it; ``ScaledClock`` runs real time ``speed`` times faster.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


def utc_now() -> datetime:
    """The current wall-clock time, timezone-aware UTC."""
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """``value`` as aware UTC; a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, aware UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""


# Longest real wait between looks at a fast clock's speed while waiting on an event.
_EVENT_SLICE_S = 0.05


def wait_event(event: threading.Event, seconds: float, clock: Clock) -> bool:
    """Wait until ``event`` is set or ``seconds`` of ``clock``'s time have passed; return
    whether it was set. A clock that runs ``speed`` times faster than real time (``ScaledClock``,
    the simulator's shared clock) waits that much less real time, looking at its speed again
    every slice (a replay may change it); any other clock waits ``seconds`` real seconds, as
    ``event.wait`` does (a ``VirtualClock`` only moves when something sleeps on it)."""
    if not isinstance(getattr(clock, "speed", None), int | float):
        return event.wait(seconds)
    deadline = clock.monotonic() + seconds
    while not event.is_set():
        left = deadline - clock.monotonic()
        if left <= 0:
            return False
        speed = float(getattr(clock, "speed", 1.0))
        event.wait(min(left / speed, _EVENT_SLICE_S))
    return True


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return utc_now()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """A clock that only moves when told to (``advance``) or when something sleeps on it."""

    def __init__(self, start: datetime | None = None, monotonic_start: float = 1000.0) -> None:
        self._wall0 = to_utc(start) if start else utc_now()
        self._mono0 = monotonic_start
        self._elapsed = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._wall0 + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        with self._lock:
            return self._mono0 + self._elapsed

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        with self._lock:
            self._elapsed += seconds

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)


class ScaledClock:
    """Real time sped up ``speed`` times, anchored at construction."""

    def __init__(self, speed: float, start: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._wall0 = to_utc(start) if start else utc_now()
        self._real0 = time.monotonic()

    def _elapsed(self) -> float:
        return (time.monotonic() - self._real0) * self.speed

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=self._elapsed())

    def monotonic(self) -> float:
        return self._real0 + self._elapsed()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.speed)
