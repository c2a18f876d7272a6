"""The agent's command handler fuzzed (issue 8, item 9): whatever arrives on
``down/{d}/cmd`` (garbage bytes, non-UTF-8, deeply nested or huge JSON, commands with wrong
types, valid commands of every type with hostile fields), the runner never raises, answers
every message (a bad one with ``command_failed``/``invalid_command``), counts every bad one,
and runs each valid ``cmd_id`` at most once. The ledger is the agent's real SQLite state, the
clip maker the real one over a real (empty) spool and outbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from test_command_runner import Events, Runtime, Sessions

from common import topics
from common.clock import VirtualClock
from common.commands import Command, CommandType
from common.schemas import EventType
from edge_agent.clips import SpoolClipMaker
from edge_agent.commands import CommandRunner
from edge_agent.outbox import Outbox
from edge_agent.spool import Spool
from edge_agent.state import AgentState

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
TOPIC = topics.cmd("cam-1")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
HOSTILE = [
    b"",
    b"\xff\xfe\x00",
    b"[" * 100_000,
    b'{"cmd_id":' * 50_000,
    b"0" * (1024 * 1024),
    b"null",
    b'{"cmd_id": "c", "type": "cut", "issued_at": "2025-03-03T08:00:00Z", "start": 1e999}',
]
ids = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=64
)
times = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


def command_fields(draw: st.DrawFn) -> dict[str, Any]:
    """A command that passes validation: every type, hostile values where the schema allows."""
    kind = draw(st.sampled_from(list(CommandType)))
    start = draw(times)
    fields: dict[str, Any] = {
        "cmd_id": draw(ids),
        "type": kind.value,
        "issued_at": draw(times).isoformat(),
        "session_id": draw(st.one_of(st.none(), ids)),
        "windows": draw(st.integers(0, 100)),
        "duration_s": draw(st.one_of(st.none(), st.floats(min_value=1e-9, max_value=1e12))),
    }
    if kind in (CommandType.OPEN_SESSION, CommandType.CLOSE_SESSION):
        fields["session_id"] = draw(ids)
    if kind is CommandType.CUT:
        length = timedelta(seconds=draw(st.integers(1, 10**6)))
        if start > datetime(9999, 12, 1, tzinfo=UTC):
            start -= length
        fields["start"], fields["end"] = start.isoformat(), (start + length).isoformat()
    if kind is CommandType.CONFIG:
        fields["settings"] = draw(
            st.dictionaries(
                st.sampled_from(["heartbeat_interval_s", "upload_window", "nonsense", ""]),
                json_values,
                min_size=1,
            )
        )
    return fields


@st.composite
def payloads(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(payload, valid): ``valid`` when it parses as a command."""
    how = draw(st.sampled_from(["hostile", "binary", "json", "wrong_type", "extra", "valid"]))
    if how == "hostile":
        return draw(st.sampled_from(HOSTILE)), False
    if how == "binary":
        return draw(st.binary(max_size=200)), False
    if how == "json":
        return json.dumps(draw(json_values)).encode(), False
    fields = command_fields(draw)
    if how == "extra":
        fields["zz_unknown"] = draw(json_values)
        return json.dumps(fields).encode(), False
    if how == "wrong_type":
        fields[draw(st.sampled_from(sorted(fields)))] = draw(json_values)
        payload = json.dumps(fields, allow_nan=True).encode()
        try:
            Command.model_validate_json(payload)
        except ValueError:
            return payload, False
        return payload, True
    return json.dumps(fields).encode(), True


@dataclass
class Agent:
    runner: CommandRunner
    sessions: Sessions
    events: Events
    ledger: AgentState


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    clock = VirtualClock(T0)
    spool, outbox = Spool(tmp_path / "spool"), Outbox(tmp_path / "outbox", clock)
    ledger = AgentState(tmp_path / "state" / "agent.sqlite3")
    clips = SpoolClipMaker(
        spool=spool,
        outbox=outbox,
        key=Ed25519PrivateKey.generate(),
        device_id="cam-1",
        chunk_size=65536,
        clock=clock,
        clock_offset_s=lambda: 0.0,
        wait_for_spool=lambda until: None,
        grab_frame=lambda: b"\xff\xd8 not really a jpeg",
        link_upload=lambda upload_id, session_id: None,
        on_queued=lambda: None,
    )
    sessions, events = Sessions(), Events()
    runner = CommandRunner(
        sessions=sessions,
        clips=clips,
        events=events,
        ledger=ledger,
        runtime=Runtime(),
        clock=clock,
    )
    try:
        yield Agent(runner, sessions, events, ledger)
    finally:
        spool.close()
        outbox.close()
        ledger.close()


@settings(max_examples=examples(100))
@given(batch=st.lists(payloads(), min_size=1, max_size=5))
def test_garbage_commands_never_crash_the_agent_and_each_is_answered(
    agent: Agent, batch: list[tuple[bytes, bool]]
) -> None:
    for payload, valid in batch:
        bad_before = agent.runner.counters["bad_command"]
        said_before = len(agent.events.sent)
        cmd = agent.runner.on_message(TOPIC, payload)
        assert (cmd is not None) == valid
        if cmd is None:
            assert agent.runner.counters["bad_command"] == bad_before + 1
            said = json.loads(agent.events.sent[-1])
            assert (said["type"], said["data"]["reason"]) == (
                EventType.COMMAND_FAILED.value,
                "invalid_command",
            )
            continue
        agent.runner.execute(cmd)
        agent.runner.execute(cmd)  # a redelivery: answered again, run once
        assert len(agent.events.sent) == said_before + 2
        first, second = agent.events.sent[-2:]
        assert first == second and json.loads(first)["cmd_id"] == cmd.cmd_id
        seen, reply = agent.ledger.command_reply(cmd.cmd_id)
        assert seen and reply is not None
