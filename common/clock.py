"""Injected time, so tests and the simulator can run faster than the wall clock (STYLE.md).

Everything that asks the time or waits takes a ``Clock``. ``SystemClock`` is real time;
``VirtualClock`` only moves when something sleeps on it, so a 30 s recording can be made in
the time it takes to encode it; ``ScaledClock`` runs real time ``speed`` times faster.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
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


# Longest real wait between looks at a fast clock's speed while waiting on an event, for a
# clock that does not say when it changes.
_EVENT_SLICE_S = 0.05
# Longest real wait on a clock that says when it changes (``ClockChanges``): only a safety net.
_CHANGES_SLICE_S = 2.0
# ``ClockChanges`` wakes a waiter through its Event's own condition, CPython's ``Event._cond``
# (there is no public way to wait on two things at once). On a Python without it, waits on such
# a clock look at it every ``_EVENT_SLICE_S`` instead; tests/simulators/test_sim_clock.py
# fails on such a Python, so that it is noticed.
WAKES_EVENT_WAITERS = isinstance(getattr(threading.Event(), "_cond", None), threading.Condition)


class ClockChanges:
    """Wakes the threads waiting in ``wait_event`` on a clock whose speed or reading may change
    while they wait (the simulator's shared clock, when its conductor sets a new speed or jumps
    ahead), so they need not look at the clock again and again meanwhile. ``changed()`` is
    called by whoever learns of the change. The wake-up is what ``Event.wait`` calls a spurious
    one (it returns True with the flag clear): anything else waiting on an event that
    ``wait_event`` waits on with such a clock must look at ``is_set()``, as ``wait_event`` does
    (``while not event.is_set(): event.wait(...)``, never ``if event.wait(...)``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[threading.Event, int]] = {}
        self.generation = 0

    @contextlib.contextmanager
    def watching(self, event: threading.Event) -> Iterator[None]:
        """While inside, a change wakes threads blocked in ``event.wait``."""
        key = id(event)
        with self._lock:
            _, count = self._waiting.get(key, (event, 0))
            self._waiting[key] = (event, count + 1)
        try:
            yield
        finally:
            with self._lock:
                count = self._waiting[key][1] - 1
                if count:
                    self._waiting[key] = (event, count)
                else:
                    del self._waiting[key]

    def changed(self) -> None:
        """The clock changed: every waiter looks at it again."""
        with self._lock:
            self.generation += 1
            events = [event for event, _ in self._waiting.values()]
        for event in events:
            _wake(event)


def _wake(event: threading.Event) -> None:
    """Wake the threads blocked in ``event.wait`` without setting it (``wait`` then returns
    True with the flag still clear; ``wait_event`` looks at the flag, not at that). Only an
    Event's own condition can do this: there is no public way to wait on two things at once."""
    cond = getattr(event, "_cond", None)
    if isinstance(cond, threading.Condition):
        with cond:
            cond.notify_all()


def wait_event(
    event: threading.Event, seconds: float, clock: Clock, *, real_limit_s: float | None = None
) -> bool:
    """Wait until ``event`` is set or ``seconds`` of ``clock``'s time have passed (or, given
    ``real_limit_s``, that many real seconds, whichever comes first); return whether it was set.
    A clock that runs ``speed`` times faster than real time (``ScaledClock``, the simulator's
    shared clock) waits that much less real time; one that may change its speed or jump
    meanwhile either wakes the wait when it does (it has ``ClockChanges`` as ``changes``) or is
    looked at again every slice. Any other clock waits ``seconds`` real seconds, as
    ``event.wait`` does (a ``VirtualClock`` only moves when something sleeps on it)."""
    if not isinstance(getattr(clock, "speed", None), int | float):
        return event.wait(seconds if real_limit_s is None else min(seconds, real_limit_s))
    found = getattr(clock, "changes", None)
    changes = found if isinstance(found, ClockChanges) and WAKES_EVENT_WAITERS else None
    deadline = clock.monotonic() + seconds
    real_deadline = time.monotonic() + (math.inf if real_limit_s is None else real_limit_s)
    with contextlib.nullcontext() if changes is None else changes.watching(event):
        while not event.is_set():
            generation = None if changes is None else changes.generation
            left = deadline - clock.monotonic()
            real_left = real_deadline - time.monotonic()
            if left <= 0 or real_left <= 0:
                return False
            real = min(left / float(getattr(clock, "speed", 1.0)), real_left)
            if changes is None:
                event.wait(min(real, _EVENT_SLICE_S))
            elif changes.generation == generation:  # else it changed as we read it: again
                event.wait(min(real, _CHANGES_SLICE_S))
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
