"""Clocks for tests of the clock offset: a wall clock that can be stepped while the monotonic
clock runs on, and a server answering a timed exchange."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from common.clock import SystemClock, VirtualClock
from edge_agent.timesync import ClockOffset

T0 = datetime(2025, 3, 3, 0, 0, tzinfo=UTC)


class SteppingClock(VirtualClock):
    """A virtual clock whose wall clock can be stepped (NTP regained) while its monotonic
    clock runs on undisturbed."""

    def __init__(self, start: datetime = T0) -> None:
        super().__init__(start)
        self.stepped = timedelta(0)

    def step(self, seconds: float) -> None:
        self.stepped += timedelta(seconds=seconds)

    def now(self) -> datetime:
        return super().now() + self.stepped


class SteppedRealClock(SystemClock):
    """The real clock, its wall time set ``ahead`` (and steppable): a device whose clock is
    wrong, or is put right mid-class."""

    def __init__(self, ahead: timedelta = timedelta(0)) -> None:
        self.ahead = ahead

    def now(self) -> datetime:
        return super().now() + self.ahead


def server_answer(
    offset: ClockOffset, clock: SteppingClock, true_offset_s: float, rtt: float = 0.2, **kw: Any
) -> bool:
    """One timed exchange with a server whose clock is ``true_offset_s`` behind the device's:
    the request leaves now, the answer (read half-way) arrives ``rtt`` later."""
    sent = clock.monotonic()
    clock.advance(rtt / 2)
    server_time = clock.now() - timedelta(seconds=true_offset_s)
    clock.advance(rtt / 2)
    return offset.observe_exchange(server_time, sent, clock.monotonic(), **kw)
