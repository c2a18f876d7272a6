"""The agent across restarts and odd turns: commands the broker handed over before a stop,
sessions that ended while the agent was down, a session superseded by another, an outbox entry
whose file is gone."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from agent_harness import Operator, field_device, later

from common.clock import SystemClock
from common.commands import CommandType
from common.schemas import EventType
from edge_agent.clips import enqueue_snapshot
from edge_agent.outbox import OutboxState
from edge_agent.service import AgentService
from simulators.broker import MosquittoBroker
from simulators.harness import ServerProcess


class AheadClock(SystemClock):
    """The real clock, read some hours later: a device that was switched off that long."""

    def __init__(self, ahead: timedelta) -> None:
        self.ahead = ahead

    def now(self) -> datetime:
        return super().now() + self.ahead


def _stopped(operator: Operator, session_id: str) -> list[object]:
    return [
        e
        for e in operator.events
        if e.type == EventType.SESSION_STOPPED and e.session_id == session_id
    ]


def test_a_command_the_broker_handed_over_before_a_stop_is_answered_after_it(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-rs-1")
    device = config.device_id
    first = AgentService(config)
    first.start()
    assert first.link.wait_connected(10)
    opened = operator.send(device, CommandType.OPEN_SESSION, session_id="q-1")
    operator.reply_to(opened.cmd_id)
    # A cut whose window has not ended yet keeps the command worker waiting for the spool...
    operator.send(device, CommandType.CUT, session_id="q-1", start=later(-1), end=later(60))
    time.sleep(1.0)
    # ...so this one is delivered (and acknowledged to the broker) but not yet executed.
    queued = operator.send(device, CommandType.CONFIG, settings={"heartbeat_interval_s": 9})
    time.sleep(1.0)
    assert operator.replies_to(queued.cmd_id) == []
    first.stop()
    second = AgentService(config)
    second.start()
    try:
        assert operator.reply_to(queued.cmd_id).type == EventType.CONFIG_APPLIED
        assert second.runtime.heartbeat_interval_s == 9
    finally:
        second.stop()


def test_a_session_superseded_by_another_is_reported_stopped(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-rs-2")
    service = AgentService(config)
    service.start()
    assert service.link.wait_connected(10)
    try:
        a = operator.send(config.device_id, CommandType.OPEN_SESSION, session_id="sup-a")
        operator.reply_to(a.cmd_id)
        time.sleep(1.0)
        b = operator.send(config.device_id, CommandType.OPEN_SESSION, session_id="sup-b")
        assert operator.reply_to(b.cmd_id).type == EventType.SESSION_STARTED
        stopped = operator.wait_for(lambda: _stopped(operator, "sup-a"), 10)
        assert stopped[0].data["reason"] == "superseded"
        assert service.state.session("sup-a").closed_at is not None
    finally:
        service.stop()


@pytest.mark.parametrize(
    ("duration_s", "ahead"),
    [
        (None, timedelta(hours=7)),  # no preset duration: ended by MAX_SESSION while down
        (3.0, timedelta(0)),  # its planned end passed while the agent was down
    ],
)
def test_a_session_that_ended_while_the_agent_was_down_is_closed_not_resumed(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    server: ServerProcess,
    operator: Operator,
    duration_s: float | None,
    ahead: timedelta,
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-rs-3")
    first = AgentService(config)
    first.start()
    assert first.link.wait_connected(10)
    fields: dict[str, object] = {"session_id": "gone-1"}
    if duration_s is not None:
        fields["duration_s"] = duration_s
    opened = operator.send(config.device_id, CommandType.OPEN_SESSION, **fields)
    operator.reply_to(opened.cmd_id)
    time.sleep(1.5)
    first.stop()  # a power cut, as far as the session knows: it was never closed
    time.sleep(3.0)
    second = AgentService(config, clock=AheadClock(ahead))
    second.start()
    try:
        assert second.link.wait_connected(10)
        time.sleep(1.5)
        assert second.open is None, "a session that is over must not record again"
        stopped = operator.wait_for(lambda: _stopped(operator, "gone-1"), 10)
        assert stopped[0].data["reason"] == "agent_restart"
        row = second.state.session("gone-1")
        assert row is not None and row.closed_at is not None
    finally:
        second.stop()


def _clip_ids(server: ServerProcess) -> set[str]:
    with sqlite3.connect(server.db_url.removeprefix("sqlite:///")) as db:
        return {row[0] for row in db.execute("SELECT upload_id FROM clips")}


def test_an_outbox_entry_whose_file_is_gone_does_not_stop_other_uploads(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-rs-4")
    service = AgentService(config)
    ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))
    assert ok

    def snapshot() -> str:
        item = enqueue_snapshot(
            service.outbox,
            service.key,
            jpeg.tobytes(),
            service.clock.now(),
            width=64,
            height=48,
            device_id=config.device_id,
            chunk_size=config.upload.chunk_size,
            clock=service.clock,
        )
        return item.upload_id

    lost = snapshot()
    service.outbox.get(lost).path.unlink()  # a failing SD card lost it
    time.sleep(0.01)
    good = snapshot()
    service.start()
    try:
        operator.wait_for(lambda: good in _clip_ids(server), 20)
        assert service.outbox.get(lost).state == OutboxState.REJECTED
    finally:
        service.stop()


def test_a_resumed_session_keeps_its_first_opening_for_the_six_hour_limit(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-rs-5")
    first = AgentService(config)
    first.start()
    assert first.link.wait_connected(10)
    opened = operator.send(config.device_id, CommandType.OPEN_SESSION, session_id="long-1")
    operator.reply_to(opened.cmd_id)
    time.sleep(1.5)
    first.stop()
    # Back 3 s before six hours after it opened: resumed, then closed at the limit.
    second = AgentService(config, clock=AheadClock(timedelta(hours=6, seconds=-3)))
    second.start()
    try:
        assert second.open is not None and second.open.session_id == "long-1"
        gap = operator.wait_for(
            lambda: [e for e in operator.events if e.type == EventType.RECORDING_GAP], 10
        )
        assert gap[0].data["reason"] == "agent_restart"
        stopped = operator.wait_for(lambda: _stopped(operator, "long-1"), 15)
        assert stopped[0].data["reason"] == "planned_end"
        assert 0 < stopped[0].data["recorded_s"] < 60, stopped[0].data
    finally:
        second.stop()


def test_every_event_of_a_device_with_a_long_id_has_its_own_event_id(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    device_id = "classroom-camera-" + "x" * 33  # 50 characters; ids may have 64
    _, config = field_device(tmp_path, mosquitto, server, device_id)
    service = AgentService(config)
    service.start()
    assert service.link.wait_connected(10)
    try:
        opened = operator.send(device_id, CommandType.OPEN_SESSION, session_id="long-id")
        operator.reply_to(opened.cmd_id)
        closed = operator.send(device_id, CommandType.CLOSE_SESSION, session_id="long-id")
        operator.reply_to(closed.cmd_id)
        ids = [e.event_id for e in operator.events if e.device_id == device_id]
        # (An event is sent again until the server acknowledges it: count ids, not messages.)
        assert len(set(ids)) == 2, ids
        # The server keeps one event per event_id: both must be there.
        with sqlite3.connect(server.db_url.removeprefix("sqlite:///")) as db:
            query = "SELECT type FROM device_events WHERE device_id = ?"
            wanted = {EventType.SESSION_STARTED.value, EventType.SESSION_STOPPED.value}
            operator.wait_for(lambda: {r[0] for r in db.execute(query, (device_id,))} >= wanted, 10)
    finally:
        service.stop()
