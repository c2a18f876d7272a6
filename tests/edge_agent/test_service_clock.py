"""The agent's clock on a real broker and server: stale timestamps teach it nothing, what it
learnt from its own uploads survives a restart and rides every event, and a wall-clock step
mid-class still lets the windows be cut."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from agent_harness import Operator, field_device, later
from clock_helpers import SteppedRealClock

from common import topics
from common.clock import utc_now
from common.commands import Command, CommandType, Schedule, ScheduledSession
from common.schemas import EventType
from common.signing import parse_signed_manifest
from edge_agent.clips import enqueue_snapshot
from edge_agent.service import AgentService
from simulators.broker import MosquittoBroker
from simulators.harness import ServerProcess

STALE = timedelta(hours=14)


def _learn_offset_from_an_upload(service: AgentService) -> None:
    """Queue a snapshot: its init/fin with the server are the timed exchanges."""
    ok, jpeg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))
    assert ok
    enqueue_snapshot(
        service.outbox,
        service.key,
        jpeg.tobytes(),
        service.clock.now(),
        width=64,
        height=48,
        device_id=service.config.device_id,
        chunk_size=service.config.upload.chunk_size,
        clock=service.clock,
    )
    service.uploads_ready.set()
    deadline = time.monotonic() + 20
    while service.offset.source != "server" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.offset.source == "server"


def test_a_timetable_retained_14_hours_and_an_old_command_do_not_move_the_offset(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-clk-1")
    device = config.device_id
    start = later(4)  # the 08:00 class
    schedule = Schedule(
        device_id=device,
        issued_at=utc_now() - STALE,
        sessions=[ScheduledSession(session_id="class-0800", start=start, duration_s=60)],
    )
    operator.client.publish(
        topics.schedule(device), schedule.to_bytes(), qos=1, retain=True
    ).wait_for_publish(5)
    service = AgentService(config, clock=SteppedRealClock())
    service.start()
    try:
        assert service.link.wait_connected(10)
        old = Command(
            cmd_id=uuid.uuid4().hex[:12],
            type=CommandType.CONFIG,
            issued_at=utc_now() - STALE,
            settings={"heartbeat_interval_s": 20},
        )
        operator.client.publish(topics.cmd(device), old.to_bytes(), qos=1).wait_for_publish(5)
        reply = operator.reply_to(old.cmd_id)
        assert reply.type == EventType.CONFIG_APPLIED
        assert service.offset.seconds is None, "stale timestamps teach the offset nothing"
        assert reply.clock_offset_s is None
        started = operator.wait_for(
            lambda: [
                e
                for e in operator.events
                if e.type == EventType.SESSION_STARTED and e.session_id == "class-0800"
            ],
            timeout=15,
        )[0]
        late = (started.at - start).total_seconds()
        assert 0 <= late < 2.0, f"the class opened {late:.1f} s after its start"
    finally:
        service.stop()


def test_the_offset_learnt_from_uploads_survives_a_restart_and_rides_every_event(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(
        tmp_path, mosquitto, server, "cam-clk-2", settings={"heartbeat": {"interval_s": 2.0}}
    )
    fast = timedelta(minutes=20)
    first = AgentService(config, clock=SteppedRealClock(fast))
    first.start()
    try:
        assert first.link.wait_connected(10)
        _learn_offset_from_an_upload(first)
        assert first.offset.seconds == pytest.approx(1200, abs=1.0)
        cmd = operator.send(config.device_id, CommandType.CONFIG, settings={"upload_window": 8})
        reply = operator.reply_to(cmd.cmd_id)
        assert reply.clock_offset_s == pytest.approx(1200, abs=1.0)
    finally:
        first.stop()
    second = AgentService(config, clock=SteppedRealClock(fast))
    assert second.offset.seconds == pytest.approx(1200, abs=1.0), "restored before any upload"
    assert second.offset.source == "server"
    seen = len(operator.heartbeats)  # the first agent's, some sent before it learnt
    second.start()
    try:
        cmd = operator.send(config.device_id, CommandType.CONFIG, settings={"upload_window": 9})
        assert operator.reply_to(cmd.cmd_id).clock_offset_s == pytest.approx(1200, abs=1.0)
        beat = operator.wait_for(
            lambda: [h for _, h in operator.heartbeats[seen:] if h.device_id == config.device_id],
            10,
        )[-1]
        assert beat.clock_offset_s == pytest.approx(1200, abs=1.0)
        assert beat.clock_source == "server" and beat.clock_synced is None
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("ahead_s", "step_s"),
    [
        (600.0, -600.0),  # ten minutes fast, put right by NTP mid-class
        (0.0, 600.0),  # right, then stepped ten minutes ahead
    ],
)
def test_a_wall_clock_step_mid_class_still_lets_a_window_over_it_be_cut(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    server: ServerProcess,
    operator: Operator,
    ahead_s: float,
    step_s: float,
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-clk-3")
    clock = SteppedRealClock(timedelta(seconds=ahead_s))
    service = AgentService(config, clock=clock)
    service.start()
    try:
        assert service.link.wait_connected(10)
        _learn_offset_from_an_upload(service)
        opened = operator.send(config.device_id, CommandType.OPEN_SESSION, session_id="step-1")
        assert operator.reply_to(opened.cmd_id).type == EventType.SESSION_STARTED
        time.sleep(4.0)
        stepped_at = utc_now()
        clock.ahead += timedelta(seconds=step_s)
        time.sleep(4.0)
        start, end = stepped_at - timedelta(seconds=2.5), stepped_at + timedelta(seconds=2.5)
        cut = operator.send(
            config.device_id, CommandType.CUT, session_id="step-1", start=start, end=end
        )
        done = operator.reply_to(cut.cmd_id, timeout=30)
        assert done.type == EventType.CUT_DONE, done.data
        item = service.outbox.get(done.data["upload_id"])
        assert item is not None
        manifest = parse_signed_manifest(item.manifest_payload).manifest
        mapped = timedelta(seconds=manifest.clock_offset_s)
        assert start - timedelta(seconds=1.05) <= manifest.cut_start - mapped <= start
        assert abs((manifest.cut_end - mapped - end).total_seconds()) < 0.25
        assert manifest.clock_offset_s == pytest.approx(ahead_s, abs=1.0)
    finally:
        service.stop()
