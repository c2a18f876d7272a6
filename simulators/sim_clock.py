"""One accelerated clock shared by every process of a replay (server, agents, phones, modems).

The replay's conductor owns a small JSON file: where simulated time stood (``base_elapsed``
seconds after ``wall0``) at a moment of the machine's monotonic clock (``base_real``, which every
process on one machine shares), and how fast it runs since (``speed``). Each process reads it
through a ``SharedClock``, a ``common.clock.Clock`` like the system clock, so the server and the
agents run their production code paths on simulated time. The conductor may change the speed or
jump ahead (a night with nothing to do); it rewrites the file atomically and readers notice:
each read of the clock looks at the file's identity (one ``stat``), and threads waiting on the
clock (``common.clock.wait_event``) are woken when the file is replaced (``ClockChanges``, fed by
``simulators.file_watch``), so they need not look at it while nothing changes.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from datetime import datetime, timedelta
from pathlib import Path

from common.clock import ClockChanges, to_utc
from simulators.file_watch import FileWatch, watch_file

# A sleep on the shared clock waits at least this long in real time: at high speeds a loop
# that sleeps 0.1 simulated seconds would otherwise spin.
MIN_REAL_SLEEP_S = 0.004
# Longest real wait between looks at the file while sleeping (the speed may change meanwhile).
MAX_REAL_SLICE_S = 0.05
# After the file changed, waiters are woken again this long after (real seconds): one that was
# between reading the clock and starting to wait missed the first wake-up.
WAKE_AGAIN_S = (0.05, 0.5)


class _WatchedClock:
    """A clock file watched in this process: its one ``ClockChanges`` and how many
    ``SharedClock`` objects use it (the watch goes when the last one does)."""

    def __init__(self, changes: ClockChanges | None, watch: FileWatch | None) -> None:
        self.changes, self.watch, self.users = changes, watch, 0


_watched_lock = threading.Lock()
_watched: dict[Path, _WatchedClock] = {}


def _watch_clock(path: Path) -> ClockChanges | None:
    """The one ``ClockChanges`` of this process for the clock file ``path`` (None when changes
    to the file cannot be watched here), for one more user until ``_unwatch_clock``."""
    with _watched_lock:
        watched = _watched.get(path)
        if watched is None:
            changes = ClockChanges()

            def replaced() -> None:
                changes.changed()
                for delay in WAKE_AGAIN_S:
                    again = threading.Timer(delay, changes.changed)
                    again.daemon = True
                    again.start()

            watch = watch_file(path, replaced)
            watched = _watched[path] = _WatchedClock(changes if watch else None, watch)
        watched.users += 1
        return watched.changes


def _unwatch_clock(path: Path) -> None:
    """One user of ``path``'s watch less; the last one takes the watch off."""
    with _watched_lock:
        watched = _watched[path]
        watched.users -= 1
        if watched.users:
            return
        del _watched[path]
    if watched.watch is not None:
        watched.watch.close()


class _State:
    __slots__ = ("base_elapsed", "base_real", "mono0", "speed", "wall0")

    def __init__(
        self, wall0: datetime, mono0: float, base_real: float, base_elapsed: float, speed: float
    ) -> None:
        self.wall0, self.mono0 = wall0, mono0
        self.base_real, self.base_elapsed, self.speed = base_real, base_elapsed, speed

    def elapsed(self, real: float) -> float:
        return self.base_elapsed + max(0.0, real - self.base_real) * self.speed

    def dump(self) -> str:
        return json.dumps(
            {
                "wall0": self.wall0.isoformat(),
                "mono0": self.mono0,
                "base_real": self.base_real,
                "base_elapsed": self.base_elapsed,
                "speed": self.speed,
            }
        )

    @classmethod
    def load(cls, text: str) -> _State:
        raw = json.loads(text)
        return cls(
            to_utc(datetime.fromisoformat(raw["wall0"])),
            float(raw["mono0"]),
            float(raw["base_real"]),
            float(raw["base_elapsed"]),
            float(raw["speed"]),
        )


class SharedClock:
    """Simulated time read from the conductor's file; ``skew_s`` puts this reader's wall clock
    that far ahead (a device whose clock is wrong). Never goes backwards within a process.
    ``close()``, or letting go of it, gives back its share of this process's watch on the file."""

    def __init__(self, path: Path, skew_s: float = 0.0) -> None:
        self.path = Path(path)
        self.skew = timedelta(seconds=skew_s)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._state: _State | None = None
        self._last = 0.0
        self._changes: ClockChanges | None = None
        self._unwatch: weakref.finalize[[Path], SharedClock] | None = None
        self._closed = False
        self._refresh()

    def _refresh(self) -> _State:
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._stamp or self._state is None:
            self._state = _State.load(self.path.read_text())
            self._stamp = stamp
        return self._state

    def _elapsed(self) -> tuple[_State, float]:
        with self._lock:
            state = self._refresh()
            self._last = max(self._last, state.elapsed(time.monotonic()))
            return state, self._last

    @property
    def speed(self) -> float:
        with self._lock:
            return self._refresh().speed

    @property
    def changes(self) -> ClockChanges | None:
        """Wakes ``wait_event`` waiters when the conductor changes the speed or jumps (None
        when that cannot be watched here, or once closed: waiters then look at the file)."""
        with self._lock:
            if self._closed:
                return None
            if self._unwatch is None:
                path = self.path.absolute()
                self._changes = _watch_clock(path)
                # Dropped without close(), the clock still gives its share of the watch back.
                self._unwatch = weakref.finalize(self, _unwatch_clock, path)
                self._unwatch.atexit = False  # the process's end takes every watch off
            return self._changes

    def close(self) -> None:
        """No longer watch the file for this clock (the clock still reads it)."""
        with self._lock:
            self._closed = True
            unwatch = self._unwatch
        if unwatch is not None:
            unwatch()

    def now(self) -> datetime:
        state, elapsed = self._elapsed()
        return state.wall0 + timedelta(seconds=elapsed) + self.skew

    def monotonic(self) -> float:
        state, elapsed = self._elapsed()
        return state.mono0 + elapsed

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        target = self._elapsed()[1] + seconds
        while True:
            state, elapsed = self._elapsed()
            left = target - elapsed
            if left <= 0:
                return
            real = left / state.speed
            time.sleep(min(max(real, MIN_REAL_SLEEP_S), MAX_REAL_SLICE_S))


class ClockConductor(SharedClock):
    """Creates the shared clock at ``start`` running ``speed`` times real time, and steers it."""

    def __init__(self, path: Path, start: datetime, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write(path, _State(to_utc(start), 1000.0, time.monotonic(), 0.0, speed))
        super().__init__(path)

    @staticmethod
    def _write(path: Path, state: _State) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(state.dump())
        os.replace(tmp, path)

    def _rebase(self, speed: float, jump_s: float = 0.0) -> None:
        with self._lock:
            state = self._refresh()
            real = time.monotonic()
            elapsed = max(self._last, state.elapsed(real)) + jump_s
            self._write(self.path, _State(state.wall0, state.mono0, real, elapsed, speed))
            self._stamp = None
            self._refresh()

    def set_speed(self, speed: float) -> None:
        """From now on, simulated time runs ``speed`` times real time."""
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._rebase(speed)

    def jump(self, seconds: float) -> None:
        """Move simulated time ``seconds`` ahead at once (nothing happens in between)."""
        if seconds < 0:
            raise ValueError("the clock cannot go back")
        self._rebase(self.speed, seconds)

    def jump_to(self, at: datetime) -> None:
        """Move simulated time ahead to ``at`` (no-op when it is already past)."""
        ahead = (to_utc(at) - self.now()).total_seconds()
        if ahead > 0:
            self.jump(ahead)
