"""The agent service against a real broker and the real server: commands answered once each,
sessions recorded, cuts and snapshots uploaded, commands waiting while the agent is away."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from agent_harness import Operator, field_device

from common.commands import CommandType
from common.schemas import EventType
from edge_agent.config import AgentConfig
from edge_agent.service import AgentService
from simulators.broker import MosquittoBroker
from simulators.harness import ServerProcess


def _clips(server: ServerProcess) -> list[tuple[str, str | None, str]]:
    with sqlite3.connect(server.db_url.removeprefix("sqlite:///")) as db:
        return db.execute("SELECT upload_id, session_id, kind FROM clips").fetchall()


@pytest.fixture
def agent(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess
) -> Iterator[tuple[AgentService, AgentConfig]]:
    _, config = field_device(tmp_path, mosquitto, server, "cam-svc-1")
    service = AgentService(config)
    service.start()
    assert service.link.wait_connected(10)
    yield service, config
    service.stop()


def test_session_cut_snapshot_config_each_answered_once(
    agent: tuple[AgentService, AgentConfig], operator: Operator, server: ServerProcess
):
    service, config = agent
    device = config.device_id
    opened = operator.send(device, CommandType.OPEN_SESSION, session_id="s-1", windows=1)
    started = operator.reply_to(opened.cmd_id)
    assert started.type == EventType.SESSION_STARTED and started.session_id == "s-1"
    time.sleep(4.5)
    closed = operator.send(device, CommandType.CLOSE_SESSION, session_id="s-1")
    stopped = operator.reply_to(closed.cmd_id)
    assert stopped.type == EventType.SESSION_STOPPED
    assert 3.5 <= stopped.data["recorded_s"] <= 7, stopped.data

    opened_at = started.at
    cut = operator.send(
        device,
        CommandType.CUT,
        session_id="s-1",
        start=opened_at + timedelta(seconds=1),
        end=opened_at + timedelta(seconds=3),
    )
    done = operator.reply_to(cut.cmd_id)
    assert done.type == EventType.CUT_DONE, done.data
    operator.wait_for(lambda: any(c[0] == done.data["upload_id"] for c in _clips(server)))
    assert (done.data["upload_id"], "s-1", "clip") in _clips(server)

    # The same command again (a redelivery): answered again, not cut again.
    operator.send(
        device, CommandType.CUT, cmd_id=cut.cmd_id, session_id="s-1", start=cut.start, end=cut.end
    )
    operator.wait_for(lambda: len(operator.replies_to(cut.cmd_id)) == 2)
    again = operator.replies_to(cut.cmd_id)[1]
    assert again.data == done.data
    assert len(_clips(server)) == 1

    # All windows of s-1 acknowledged: its recording is released from the pin.
    operator.wait_for(lambda: service.state.session("s-1").cuts_acked == 1)
    assert not service.state.session("s-1").pinned

    snap = operator.send(device, CommandType.SNAPSHOT)
    shot = operator.reply_to(snap.cmd_id)
    assert shot.type == EventType.SNAPSHOT_DONE
    operator.wait_for(lambda: any(c[2] == "snapshot" for c in _clips(server)))

    bad = operator.send(device, CommandType.CONFIG, settings={"heartbeat_interval": 5})
    refused = operator.reply_to(bad.cmd_id)
    assert refused.type == EventType.COMMAND_FAILED
    assert refused.data["field"] == "heartbeat_interval"
    good = operator.send(
        device,
        CommandType.CONFIG,
        settings={"heartbeat_interval_s": 2, "upload_rate_limit_bytes_per_s": 0},
    )
    assert operator.reply_to(good.cmd_id).type == EventType.CONFIG_APPLIED
    assert service.runtime.heartbeat_interval_s == 2
    assert service.state.get("runtime")["heartbeat_interval_s"] == 2


def test_cut_of_a_window_never_recorded_fails_with_a_reason(
    agent: tuple[AgentService, AgentConfig], operator: Operator
):
    service, config = agent
    cut = operator.send(
        config.device_id,
        CommandType.CUT,
        start=service.clock.now() - timedelta(hours=2),
        end=service.clock.now() - timedelta(hours=1),
    )
    failed = operator.reply_to(cut.cmd_id)
    assert failed.type == EventType.CUT_FAILED
    assert failed.data["reason"] == "not_recorded"


def test_commands_sent_while_the_agent_is_away_arrive_when_it_returns(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-svc-2")
    first = AgentService(config)
    first.start()
    assert first.link.wait_connected(10)
    first.stop()
    cmd = operator.send(config.device_id, CommandType.CONFIG, settings={"heartbeat_interval_s": 7})
    time.sleep(0.5)
    assert operator.replies_to(cmd.cmd_id) == []
    second = AgentService(config)
    second.start()
    try:
        assert operator.reply_to(cmd.cmd_id).type == EventType.CONFIG_APPLIED
        assert second.runtime.heartbeat_interval_s == 7
    finally:
        second.stop()


def test_a_bad_command_is_counted_and_answered_not_fatal(
    agent: tuple[AgentService, AgentConfig], operator: Operator
):
    service, config = agent
    from common import topics

    operator.client.publish(topics.cmd(config.device_id), b"{not json", qos=1).wait_for_publish(5)
    failed = operator.wait_for(
        lambda: next((e for e in operator.events if e.type == EventType.COMMAND_FAILED), None)
    )
    assert failed.data["reason"] == "invalid_command"
    assert service.link.counters["bad_command"] == 1
    ok = operator.send(config.device_id, CommandType.CONFIG, settings={"upload_window": 8})
    assert operator.reply_to(ok.cmd_id).type == EventType.CONFIG_APPLIED
