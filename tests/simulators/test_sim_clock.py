"""The replay's shared clock: another process reading the file agrees with the conductor, sees
its speed changes and jumps, applies its own skew, never goes back, and sleeps simulated time."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.clock import WAKES_EVENT_WAITERS, ClockChanges, wait_event
from simulators.file_watch import watch_file
from simulators.sim_clock import ClockConductor, SharedClock

T0 = datetime(2026, 11, 30, 0, 30, tzinfo=UTC)

# A reader in another process: one line in, its clock's reading out.
READER = """
import sys
from pathlib import Path
from simulators.sim_clock import SharedClock
clock = SharedClock(Path(sys.argv[1]), skew_s=float(sys.argv[2]))
for _ in sys.stdin:
    print(clock.now().isoformat(), clock.monotonic(), clock.speed, flush=True)
"""


class Reader:
    """A child process reading the shared clock when asked."""

    def __init__(self, path: Path, skew_s: float = 0.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER, str(path), str(skew_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self) -> tuple[datetime, float, float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        wall, mono, speed = self.process.stdout.readline().split()
        return datetime.fromisoformat(wall), float(mono), float(speed)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(5)


@pytest.fixture
def conductor(tmp_path: Path) -> ClockConductor:
    return ClockConductor(tmp_path / "clock.json", T0, speed=100.0)


@pytest.fixture
def reader(conductor: ClockConductor) -> Iterator[Reader]:
    child = Reader(conductor.path)
    try:
        yield child
    finally:
        child.close()


def test_a_child_reads_the_conductors_time(conductor: ClockConductor, reader: Reader) -> None:
    before = conductor.now()
    child_now, child_mono, speed = reader.read()
    after = conductor.now()
    # One machine, one monotonic clock: the child's reading falls between the two.
    assert before <= child_now <= after
    assert speed == 100.0
    assert (after - before).total_seconds() < 100  # simulated seconds: under a real second
    offset = conductor.monotonic() - (conductor.now() - T0).total_seconds()
    assert child_mono - offset == pytest.approx((child_now - T0).total_seconds(), abs=0.5)


def test_the_child_sees_a_speed_change_and_a_jump(
    conductor: ClockConductor, reader: Reader
) -> None:
    first, _, _ = reader.read()
    conductor.set_speed(2.0)
    slow, _, speed = reader.read()
    assert speed == 2.0
    conductor.jump(3600)
    before = conductor.now()
    jumped, _, _ = reader.read()
    assert jumped >= before >= slow + timedelta(hours=1)
    # At 2x nothing but the jump moved it more than a few seconds.
    assert (jumped - before).total_seconds() < 2
    conductor.jump_to(T0)  # in the past: no-op, time never goes back
    assert reader.read()[0] >= jumped >= first


def test_a_skewed_reader_is_off_by_its_skew(conductor: ClockConductor) -> None:
    child = Reader(conductor.path, skew_s=-90.0)
    try:
        before = conductor.now()
        behind, _, _ = child.read()
        after = conductor.now()
    finally:
        child.close()
    assert before - timedelta(seconds=90) <= behind <= after - timedelta(seconds=90)


def test_a_reader_never_goes_back_when_the_file_is_rewritten_behind_it(
    conductor: ClockConductor,
) -> None:
    clock = SharedClock(conductor.path)
    conductor.jump(600)
    ahead = clock.now()
    state = json.loads(conductor.path.read_text())
    state["base_elapsed"] = 0.0  # a conductor that lost the jump
    rewritten = conductor.path.with_name("rewritten.json")
    rewritten.write_text(json.dumps(state))
    os.replace(rewritten, conductor.path)
    assert SharedClock(conductor.path).now() < ahead  # a fresh reader is behind
    later = clock.now()
    assert later >= ahead
    assert clock.monotonic() >= conductor.monotonic() - 1


def test_sleep_returns_once_the_simulated_time_has_passed(conductor: ClockConductor) -> None:
    clock = SharedClock(conductor.path)
    conductor.set_speed(500.0)
    before, real = clock.now(), time.monotonic()
    clock.sleep(60)
    waited = time.monotonic() - real
    assert clock.now() - before >= timedelta(seconds=60)
    assert 0.1 <= waited < 0.5  # 60 simulated seconds at 500x: 0.12 s


def test_waiting_on_an_event_counts_simulated_time(conductor: ClockConductor) -> None:
    # The agent's loops (heartbeats, camera reopen backoff) wait this way: a 30 s heartbeat
    # interval is 30 simulated seconds, not 30 real ones.
    clock = SharedClock(conductor.path)
    conductor.set_speed(300.0)
    event = threading.Event()
    before, real = clock.now(), time.monotonic()
    assert wait_event(event, 30, clock) is False
    assert clock.now() - before >= timedelta(seconds=30)
    assert time.monotonic() - real < 0.5
    threading.Timer(0.05, event.set).start()
    real = time.monotonic()
    assert wait_event(event, 3600, clock) is True
    assert time.monotonic() - real < 0.5


def _switches(thread: threading.Thread) -> int:
    """Context switches of ``thread`` so far (each one a wake-up, give or take)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)


@pytest.mark.parametrize("change", ["jump", "speed"])
def test_a_waiter_notices_a_jump_or_a_new_speed_at_once(
    conductor: ClockConductor, change: str
) -> None:
    # Each agent waits out its heartbeat interval this way: at 1x it waits 30 real seconds,
    # and when the replay then jumps ahead or speeds up the wait must end when simulated
    # time says so, not 30 real seconds later.
    conductor.set_speed(1.0)
    clock = SharedClock(conductor.path)
    event = threading.Event()
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(wait_event(event, 30, clock)))
    waiter.start()
    time.sleep(0.3)  # the waiter is waiting (this is what is measured, not a condition)
    real = time.monotonic()
    if change == "jump":
        conductor.jump(60)
    else:
        conductor.set_speed(1000.0)
    waiter.join(5)
    assert outcome == [False]
    assert time.monotonic() - real < 0.3


def test_a_waiter_on_a_steady_clock_does_not_look_at_it(conductor: ClockConductor) -> None:
    conductor.set_speed(3.0)
    clock = SharedClock(conductor.path)
    event = threading.Event()
    waiter = threading.Thread(target=wait_event, args=(event, 60, clock))
    waiter.start()
    time.sleep(0.2)
    before = _switches(waiter)
    time.sleep(1.0)
    woke = _switches(waiter) - before
    event.set()
    waiter.join(5)
    assert not waiter.is_alive()
    assert woke <= 2  # a sliced wait looked at the file 20 times a second


def _inotify_fds() -> list[int]:
    """This process's inotify instances (descriptors)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify":
                found.append(int(name))
        except OSError:  # closed meanwhile (listdir's own descriptor)
            pass
    return found


def _inotify_watches() -> int:
    """Watches held by this process's inotify instances (one line each in fdinfo)."""
    return sum(
        Path(f"/proc/self/fdinfo/{fd}").read_text().count("inotify wd:") for fd in _inotify_fds()
    )


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before``, but for the short-lived second wake-ups (timers)."""
    return [
        t for t in threading.enumerate() if t not in before and not isinstance(t, threading.Timer)
    ]


def test_many_clocks_share_one_inotify_instance_and_thread_and_give_their_watches_back(
    tmp_path: Path,
) -> None:
    # A replay process (and the test suite) makes clocks over and over, one folder per run:
    # the per-user limit is 128 inotify instances, and each agent of a fleet holds one.
    threads_before = set(threading.enumerate())
    watches_before = _inotify_watches()
    clocks: list[SharedClock] = []
    for run in range(20):
        conductor = ClockConductor(tmp_path / f"run-{run}" / "clock.json", T0, speed=1.0)
        readers = [SharedClock(conductor.path, skew_s=s) for s in (0.0, 5.0, -5.0)]
        clocks += [conductor, *readers]
        assert all(c.changes is not None for c in (conductor, *readers))
    assert len(_inotify_fds()) <= 1
    assert len(_new_threads(threads_before)) <= 1
    assert _inotify_watches() == watches_before + 20  # one per clock folder, not per clock

    # Shared, the watch still wakes each waiter when its own clock changes.
    event = threading.Event()
    outcome: list[bool] = []

    def wait_on(clock: SharedClock) -> None:
        outcome.append(wait_event(event, 30, clock))

    waiter = threading.Thread(target=wait_on, args=(clocks[-1],))
    waiter.start()
    time.sleep(0.3)  # the waiter is waiting (this is what is measured, not a condition)
    real = time.monotonic()
    assert isinstance(clocks[-4], ClockConductor)
    clocks[-4].jump(60)
    waiter.join(5)
    assert outcome == [False] and time.monotonic() - real < 0.3

    for clock in clocks[:-4]:
        clock.close()
    assert _inotify_watches() == watches_before + 1
    assert clocks[0].changes is None  # a closed clock is no longer watched

    # The last run's folder is removed before its clocks are let go: nothing breaks, and a
    # clock dropped without close() gives its watch back all the same.
    shutil.rmtree(tmp_path / "run-19")
    del clocks, conductor, readers
    gc.collect()
    assert _inotify_watches() == watches_before
    again = ClockConductor(tmp_path / "run-19" / "clock.json", T0, speed=1.0)
    assert again.changes is not None and _inotify_watches() == watches_before + 1
    del again
    gc.collect()
    assert _inotify_watches() == watches_before
    assert len(_inotify_fds()) <= 1 and len(_new_threads(threads_before)) <= 1


def test_a_folder_that_cannot_be_watched_leaves_the_clock_to_be_looked_at(tmp_path: Path) -> None:
    assert watch_file(tmp_path / "no-such-folder" / "clock.json", lambda: None) is None


class _ChangingClock:
    """A fast clock that says when it changes, as the shared clock does (``changes``)."""

    speed = 1.0

    def __init__(self) -> None:
        self.changes = ClockChanges()
        self.ahead_s = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead_s

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.monotonic())

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def test_a_clock_change_wakes_a_waiter_on_this_python() -> None:
    # ClockChanges wakes a waiter through its Event's own condition (CPython's Event._cond, as
    # there is no public way to wait on two things at once). A Python whose Event works
    # otherwise must fail here, not leave every agent's wait to its 2 s safety slice.
    assert WAKES_EVENT_WAITERS
    clock = _ChangingClock()
    event = threading.Event()
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(wait_event(event, 30, clock)))
    plain: list[bool] = []
    other = threading.Thread(target=lambda: plain.append(event.wait(10)))
    real = time.monotonic()
    waiter.start()
    other.start()
    # The conductor jumps past the waiter's end, again until both are back (a thread not yet
    # waiting misses a wake-up, as the shared clock's second wake-ups allow for); without the
    # wake-ups, they would be back after 2 s and 10 s.
    while (waiter.is_alive() or other.is_alive()) and time.monotonic() - real < 1.0:
        clock.ahead_s += 60.0
        clock.changes.changed()
        waiter.join(0.01)
        other.join(0.01)
    assert outcome == [False] and plain and time.monotonic() - real < 0.3
    # The wake-up is a spurious one to anyone else waiting on that event: True, flag clear.
    # So every other waiter on an event that wait_event waits on must look at is_set().
    assert plain == [True] and not event.is_set()
