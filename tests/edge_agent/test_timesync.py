"""The clock offset: learnt from timed exchanges only, guarded against jumps, following steps of
the device's own wall clock, preferring a synchronised system clock, kept across restarts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from clock_helpers import T0, SteppingClock, server_answer

from edge_agent.timesync import ClockOffset, SystemSync, kernel_boot_id, kernel_clock_sync


def test_the_offset_comes_from_the_exchange_midpoint_and_the_shortest_round_trip_wins():
    clock = SteppingClock()
    offset = ClockOffset(clock)
    assert offset.seconds is None
    assert server_answer(offset, clock, 1200.0, rtt=4.0)
    assert offset.seconds == pytest.approx(1200.0, abs=1e-3)
    # An answer whose server time was read late in a long round trip: the midpoint errs by
    # up to half of it; the short exchange that follows is preferred.
    sent = clock.monotonic()
    clock.advance(6.0)
    late = clock.now() - timedelta(seconds=1200.0)
    offset.observe_exchange(late, sent, clock.monotonic())
    assert offset.seconds == pytest.approx(1200.0, abs=1e-3), "the 4 s exchange beats the 6 s one"
    server_answer(offset, clock, 1200.5, rtt=0.05)
    assert offset.seconds == pytest.approx(1200.5, abs=1e-3)
    assert offset.source == "server"


def test_an_answer_received_before_it_was_asked_for_is_ignored():
    clock = SteppingClock()
    offset = ClockOffset(clock)
    assert not offset.observe_exchange(T0, 1000.0, 999.0)
    assert offset.seconds is None


def test_a_single_source_claiming_a_two_hour_jump_is_refused_two_agreeing_sources_move_it():
    clock = SteppingClock()
    offset = ClockOffset(clock, max_jump_s=300)
    server_answer(offset, clock, 0.5)
    assert not server_answer(offset, clock, 7200.0), "one source alone may not jump 2 h"
    assert offset.seconds == pytest.approx(0.5, abs=1e-3)
    assert offset.refused == 1
    clock.advance(30)
    # Network time (whole seconds) agrees with the refused server answer: two sources.
    assert server_answer(offset, clock, 7200.0, rtt=0.01, source="modem", resolution_s=1.0)
    assert offset.seconds == pytest.approx(7200.0, abs=1.0)


def test_two_server_answers_with_different_round_trips_agree_a_jump_but_one_repeated_does_not():
    clock = SteppingClock()
    offset = ClockOffset(clock, max_jump_s=300)
    server_answer(offset, clock, 0.0)
    sent = clock.monotonic()
    clock.advance(0.1)
    claim = clock.now() - timedelta(hours=2)
    clock.advance(0.1)
    received = clock.monotonic()
    assert not offset.observe_exchange(claim, sent, received)
    assert not offset.observe_exchange(claim, sent, received), "the same exchange twice"
    assert offset.seconds == pytest.approx(0.0, abs=1e-3)
    clock.advance(60)
    assert server_answer(offset, clock, 7200.0, rtt=0.5)
    assert offset.seconds == pytest.approx(7200.0, abs=0.5)


def test_a_small_correction_is_taken_at_once():
    clock = SteppingClock()
    offset = ClockOffset(clock, max_jump_s=300)
    server_answer(offset, clock, 0.0)
    clock.advance(600)
    assert server_answer(offset, clock, 120.0, rtt=0.01)
    assert offset.seconds == pytest.approx(120.0, abs=1e-3)


@pytest.mark.parametrize("step_s", [600.0, -600.0])
def test_a_step_of_the_device_wall_clock_moves_the_offset_with_it(step_s: float):
    clock = SteppingClock()
    offset = ClockOffset(clock, max_jump_s=300)
    server_answer(offset, clock, 0.0)
    clock.advance(60)
    clock.step(step_s)  # NTP regained mid-class on a Pi without RTC
    assert offset.seconds == pytest.approx(step_s, abs=0.01)
    server_now = clock.now() - timedelta(seconds=offset.or_zero())
    assert abs((server_now - (T0 + timedelta(seconds=60.2))).total_seconds()) < 0.01
    # A server answer after the step confirms the estimate instead of being a jump.
    assert server_answer(offset, clock, step_s, rtt=0.05)
    assert offset.refused == 0
    # An event stamped before the step keeps the offset that held then.
    assert offset.at_wall(T0 + timedelta(seconds=30)) == pytest.approx(0.0, abs=0.01)


def test_a_synchronised_system_clock_wins_and_server_answers_only_confirm_it():
    clock = SteppingClock()
    synced = SystemSync(synced=True, max_error_s=0.05)
    offset = ClockOffset(clock, sync_probe=lambda: synced)
    assert offset.seconds == 0.0
    assert offset.reading().source == "system" and offset.reading().synced is True
    server_answer(offset, clock, 0.3)
    assert offset.seconds == 0.0 and offset.disagreements == 0
    server_answer(offset, clock, 900.0)
    assert offset.seconds == 0.0
    assert offset.disagreements == 1, "a server far from a synced clock is noted, not obeyed"


def test_without_a_synchronised_clock_the_server_answers_rule():
    clock = SteppingClock()
    offset = ClockOffset(clock, sync_probe=lambda: SystemSync(synced=False, max_error_s=16.0))
    server_answer(offset, clock, 42.0)
    reading = offset.reading()
    assert reading.offset_s == pytest.approx(42.0, abs=1e-3)
    assert reading.source == "server" and reading.synced is False


def test_the_estimate_survives_a_restart_of_the_agent_and_a_reboot():
    clock = SteppingClock()
    stored: list[dict[str, Any]] = []
    first = ClockOffset(clock, boot_id="boot-a", on_change=stored.append)
    server_answer(first, clock, 1200.0, rtt=0.1)
    assert stored and stored[-1]["source"] == "server"
    assert stored[-1]["offset_s"] == pytest.approx(1200.0, abs=1e-3)
    clock.advance(50)
    restarted = ClockOffset(clock, boot_id="boot-a", restored=stored[-1])
    assert restarted.seconds == pytest.approx(1200.0, abs=0.01)
    assert restarted.source == "server"
    # Refused like any other: the restored estimate guards against a lone jump.
    assert not server_answer(restarted, clock, 9000.0)
    # After a reboot the monotonic clock starts again: only the value carries over.
    rebooted_clock = SteppingClock(T0 + timedelta(hours=3))
    rebooted = ClockOffset(rebooted_clock, boot_id="boot-b", restored=stored[-1])
    reading = rebooted.reading()
    assert reading.offset_s == pytest.approx(1200.0, abs=0.01)
    assert reading.uncertainty_s is not None and reading.uncertainty_s > 1.0


def test_the_kernel_probes_answer_on_linux():
    sync = kernel_clock_sync()
    assert sync is not None and sync.max_error_s >= 0
    assert kernel_boot_id()
