"""A session's life across restarts and stray commands: a restart inside a class resumes it at
once whatever opened it and reports the outage; a class that ended during the outage is
reported with the outage as a gap; ``close`` of a session that is not open changes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_harness import SMALL_CAMERA, Operator, field_device, later

from common.commands import CommandType, Schedule, ScheduledSession
from common.schemas import Event, EventType
from edge_agent.commands import upload_id_for
from edge_agent.service import AgentService
from edge_agent.sessions import (
    MAX_SESSION,
    OpenSession,
    end_on_device_clock,
    recorded_seconds,
    seconds_to_next_change,
)
from simulators.broker import MosquittoBroker
from simulators.harness import ServerProcess

T0 = datetime.fromisoformat("2025-03-03T08:00:00+00:00")


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- pure rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gaps", "expected"),
    [
        ([], 600.0),
        ([(60, 120)], 540.0),
        ([(60, 120), (100, 180)], 480.0),  # overlapping: a camera loss open at a power cut
        ([(60, 120), (60, 120)], 540.0),  # the same gap said twice
        ([(-50, 30)], 570.0),  # clipped to the session
        ([(580, 700)], 580.0),
        ([(700, 800)], 600.0),  # after the close: nothing recorded was lost
        ([(0, 600)], 0.0),
    ],
)
def test_recorded_seconds_subtracts_the_union_of_gaps_inside_the_session(
    gaps: list[tuple[float, float]], expected: float
):
    pairs = [(_at(a), _at(b)) for a, b in gaps]
    assert recorded_seconds(_at(0), _at(600), pairs) == pytest.approx(expected)


def test_a_session_ends_at_its_planned_end_on_the_device_clock_else_after_six_hours():
    planned = OpenSession("s", "schedule", _at(5400), _at(0))
    # The device clock runs 20 minutes ahead of the server's.
    device_now, server_now = _at(1200 + 100), _at(100)
    assert end_on_device_clock(planned, server_now, device_now) == _at(5400 + 1200)
    unplanned = OpenSession("s", "command", None, _at(0))
    assert end_on_device_clock(unplanned, server_now, device_now) == _at(0) + MAX_SESSION


@pytest.mark.parametrize(
    ("server_s", "open_session", "expected"),
    [
        (0, None, 600.0),  # before the first class: its start
        (600, None, 1200.0),  # at its start, nothing open (closed early): its end
        (700, OpenSession("a", "schedule", _at(1800), _at(700)), 1100.0),  # its end
        (2400, None, 1200.0),  # between classes: the second's start
        (4800, None, None),  # after the last one: nothing planned
        # opened by command, no planned end: six hours after it opened, on the device clock
        (4800, OpenSession("c", "command", None, _at(4800 + 300)), MAX_SESSION.total_seconds()),
    ],
)
def test_the_timetable_next_changes_at_a_start_or_an_end(
    server_s: float, open_session: OpenSession | None, expected: float | None
):
    schedule = Schedule(
        device_id="dev",
        issued_at=_at(0),
        sessions=[
            ScheduledSession(session_id="a", start=_at(600), duration_s=1200),
            ScheduledSession(session_id="b", start=_at(3600), duration_s=1200),
        ],
    )
    # The device clock runs 5 minutes ahead of the server's.
    ahead = seconds_to_next_change(schedule, open_session, _at(server_s), _at(server_s + 300))
    assert ahead == expected
    assert seconds_to_next_change(None, None, _at(server_s), _at(server_s)) is None


def test_an_upload_id_belongs_to_its_device_and_is_stable_per_command():
    assert upload_id_for("cam-1", "cut-s-0") == upload_id_for("cam-1", "cut-s-0")
    assert upload_id_for("cam-1", "cut-s-0") != upload_id_for("cam-2", "cut-s-0")
    # No two ways of splitting the same characters give the same id.
    assert upload_id_for("cam-1c", "ut-s-0") != upload_id_for("cam-1", "cut-s-0")
    assert len(upload_id_for("cam-1", "cut-s-0")) == 32


# -- the agent on a real broker ----------------------------------------------------------------


def _of(operator: Operator, type_: EventType, session_id: str) -> list[Event]:
    """Each event once: an event the server has not acknowledged yet is sent again after a
    restart, and the server (like this) keeps one per event id."""
    seen: dict[str, Event] = {}
    for e in operator.events:
        if e.type == type_ and e.session_id == session_id:
            seen.setdefault(e.event_id, e)
    return list(seen.values())


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _recorded_until(service: AgentService, session_id: str) -> datetime | None:
    ends = [
        r.ended_wall or r.started_wall
        for r in service.spool.recordings()
        if r.session_id == session_id
    ]
    segs = service.spool.segments_between(
        service.clock.now() - timedelta(minutes=5), service.clock.now() + timedelta(minutes=5)
    )
    return max([*ends, *(s.end_wall for s in segs)], default=None)


def _record_a_while(service: AgentService, session_id: str, seconds: float) -> None:
    """Wait until the spool holds ``seconds`` of the session."""
    opened = _wait(lambda: service.open and service.open.opened_at, 15, "the session to open")
    _wait(
        lambda: (
            (until := _recorded_until(service, session_id)) is not None
            and (until - opened).total_seconds() >= seconds
        ),
        20,
        f"{seconds} s of {session_id} in the spool",
    )


def _check_stopped(stopped: Event, gaps_at_least: int) -> float:
    """A ``session_stopped`` whose ``recorded_s`` agrees with its own ``gaps``; their total."""
    data = stopped.data
    gaps = [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in data["gaps"]]
    assert len(gaps) >= gaps_at_least, data
    opened = datetime.fromisoformat(data["opened_at"])
    closed = datetime.fromisoformat(data["closed_at"])
    assert data["recorded_s"] == pytest.approx(recorded_seconds(opened, closed, gaps))
    return sum((b - a).total_seconds() for a, b in gaps)


def test_a_timetabled_session_resumes_at_once_after_a_restart_and_reports_each_outage(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-life-r1")
    device = config.device_id
    operator.timetable(device, ("tt-r1", later(1), 120.0))
    service = AgentService(config)
    service.start()
    _wait(lambda: service.state.get("schedule"), 10, "the timetable")
    _record_a_while(service, "tt-r1", 2.0)
    first_opening = service.open.opened_at if service.open else None
    outages = []
    try:
        for _ in range(2):  # powered off twice, each time back within seconds
            service.stop()  # the session was never closed: a power cut, as far as it knows
            time.sleep(2.0)
            service = AgentService(config)
            before = len(_of(operator, EventType.RECORDING_GAP, "tt-r1"))
            service.start()
            # At once: not when the timetable check comes round with whatever offset it has.
            assert service.open is not None and service.open.session_id == "tt-r1"
            assert service.open.opened_at == first_opening, "it keeps its first opening"
            gaps = operator.wait_for(
                lambda: _of(operator, EventType.RECORDING_GAP, "tt-r1")[before:],  # noqa: B023
                15,
            )
            gap = gaps[0].data
            assert gap["reason"] == "agent_restart"
            outage = datetime.fromisoformat(gap["end"]) - datetime.fromisoformat(gap["start"])
            # Down for the 2 s slept, less up to a frame: a recording ends where its last
            # frame does, which may be a frame after the stop.
            frame = timedelta(seconds=1 / float(SMALL_CAMERA["fps"]))
            assert timedelta(seconds=2) - frame <= outage < timedelta(seconds=15), gap
            outages.append(outage.total_seconds())
            _record_a_while(service, "tt-r1", 1.0)
        close = operator.send(device, CommandType.CLOSE_SESSION, session_id="tt-r1")
        stopped = operator.reply_to(close.cmd_id)
        assert stopped.type == EventType.SESSION_STOPPED, stopped.data
        assert len(_of(operator, EventType.SESSION_STARTED, "tt-r1")) == 1, "said once"
        missing = _check_stopped(stopped, gaps_at_least=2)
        assert missing >= sum(outages) - 0.01, (stopped.data, outages)
        span = (
            datetime.fromisoformat(stopped.data["closed_at"])
            - datetime.fromisoformat(stopped.data["opened_at"])
        ).total_seconds()
        assert stopped.data["recorded_s"] <= span - sum(outages) + 0.01
    finally:
        service.stop()


def test_a_timetabled_session_that_ended_during_the_outage_reports_it_as_a_gap(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-life-r2")
    device = config.device_id
    start = later(1)
    operator.timetable(device, ("tt-r2", start, 8.0))
    first = AgentService(config)
    first.start()
    _wait(lambda: first.state.get("schedule"), 10, "the timetable")
    _record_a_while(first, "tt-r2", 2.0)
    first.stop()
    planned_end = start + timedelta(seconds=8)
    time.sleep(max(0.0, (planned_end - datetime.now(planned_end.tzinfo)).total_seconds()) + 2)
    second = AgentService(config)
    last = _recorded_until(second, "tt-r2")
    second.start()
    try:
        assert second.open is None, "a class that is over is not recorded again"
        stopped = operator.wait_for(lambda: _of(operator, EventType.SESSION_STOPPED, "tt-r2"), 15)
        data = stopped[0].data
        assert data["reason"] == "agent_restart"
        closed = datetime.fromisoformat(data["closed_at"])
        assert abs((closed - planned_end).total_seconds()) < 0.5, data
        _check_stopped(stopped[0], gaps_at_least=1)
        gap_start, gap_end = (datetime.fromisoformat(t) for t in data["gaps"][-1])
        assert last is not None and abs((gap_start - last).total_seconds()) < 0.5, data
        assert gap_end == closed
        opened = datetime.fromisoformat(data["opened_at"])
        assert data["recorded_s"] == pytest.approx((last - opened).total_seconds(), abs=0.5)
        # The server sums started/stopped/gap events: the gap is said as an event too.
        gaps = _of(operator, EventType.RECORDING_GAP, "tt-r2")
        assert [g.data["start"] for g in gaps] == [data["gaps"][-1][0]]
    finally:
        second.stop()


def test_close_of_a_session_that_is_not_open_fails_not_open(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-life-r3")
    device = config.device_id
    service = AgentService(config)
    service.start()
    assert service.link.wait_connected(10)
    try:
        never = operator.send(device, CommandType.CLOSE_SESSION, session_id="not-yet")
        refused = operator.reply_to(never.cmd_id)
        assert refused.type == EventType.COMMAND_FAILED, refused
        assert refused.data["reason"] == "not_open"
        assert service.state.session("not-yet") is None, "nothing was closed"

        opened = operator.send(device, CommandType.OPEN_SESSION, session_id="twice")
        operator.reply_to(opened.cmd_id)
        first = operator.send(device, CommandType.CLOSE_SESSION, session_id="twice")
        assert operator.reply_to(first.cmd_id).type == EventType.SESSION_STOPPED
        again = operator.send(device, CommandType.CLOSE_SESSION, session_id="twice")
        late = operator.reply_to(again.cmd_id)
        assert late.type == EventType.COMMAND_FAILED
        assert late.data["reason"] == "not_open" and late.data["closed_at"]
        assert len(_of(operator, EventType.SESSION_STOPPED, "twice")) == 1
    finally:
        service.stop()
