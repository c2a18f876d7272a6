"""The command runner on its own, through tiny in-memory ports: no service, no broker.

It answers each cmd_id once (a repeat gets the first answer, byte for byte), refuses to close a
session that is not open, and says ``cut_failed``/``not_recorded`` for a window not on disk.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.clock import VirtualClock
from common.commands import Command, CommandType
from common.schemas import EventType
from edge_agent.clips import SpoolClipMaker, upload_id_for
from edge_agent.commands import CommandRunner
from edge_agent.errors import CutError
from edge_agent.outbox import Outbox
from edge_agent.ports import MadeClip, RuntimeSettings
from edge_agent.spool import Spool

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


class Sessions:
    def __init__(self) -> None:
        self.open: set[str] = set()
        self.closed: dict[str, datetime] = {}
        self.opened = 0

    def open_session(
        self,
        session_id: str,
        *,
        source: str,
        windows: int,
        planned_end: datetime | None,
        cmd_id: str | None = None,
    ) -> dict[str, Any]:
        self.opened += 1
        self.open.add(session_id)
        return {"source": source, "opened_at": T0.isoformat()}

    def close_session(self, session_id: str, *, reason: str) -> dict[str, Any] | None:
        if session_id not in self.open:
            return None
        self.open.discard(session_id)
        self.closed[session_id] = T0 + timedelta(minutes=45)
        return {"reason": reason}

    def closed_at(self, session_id: str) -> datetime | None:
        return self.closed.get(session_id)


class Clips:
    """A spool that holds ``recorded`` (server UTC spans) and nothing else."""

    def __init__(self, recorded: list[tuple[datetime, datetime]]) -> None:
        self.recorded = recorded
        self.cuts = 0

    def cut(self, cmd_id: str, session_id: str | None, start: datetime, end: datetime) -> MadeClip:
        if not any(a <= start and end <= b for a, b in self.recorded):
            raise CutError(start, end, "no recording covers the window")
        self.cuts += 1
        return MadeClip(upload_id_for("cam-1", cmd_id), 1000 + self.cuts, f"{self.cuts:064x}")

    def snapshot(self, cmd_id: str) -> MadeClip:
        return MadeClip(upload_id_for("cam-1", cmd_id), 10, "0" * 64)


class Events:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def emit(
        self,
        type_: EventType,
        *,
        cmd_id: str | None = None,
        session_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> bytes:
        payload = json.dumps(
            {"n": len(self.sent), "type": type_.value, "cmd_id": cmd_id, "data": data or {}}
        ).encode()
        self.sent.append(payload)
        return payload

    def send_again(self, payload: bytes) -> None:
        self.sent.append(payload)

    def said(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.sent]


class Ledger:
    def __init__(self) -> None:
        self.replies: dict[str, bytes | None] = {}

    def command_reply(self, cmd_id: str) -> tuple[bool, bytes | None]:
        return cmd_id in self.replies, self.replies.get(cmd_id)

    def command_received(self, cmd_id: str, type_: str, at: datetime) -> None:
        self.replies.setdefault(cmd_id, None)

    def command_answered(self, cmd_id: str, reply: bytes) -> None:
        self.replies[cmd_id] = reply


class Runtime:
    def __init__(self) -> None:
        self.runtime = RuntimeSettings.model_validate({})

    def apply_runtime(self, runtime: RuntimeSettings) -> None:
        self.runtime = runtime


def _runner(clips: Any, ledger: Ledger | None = None) -> tuple[CommandRunner, Sessions, Events]:
    sessions, events = Sessions(), Events()
    runner = CommandRunner(
        sessions=sessions,
        clips=clips,
        events=events,
        ledger=ledger or Ledger(),
        runtime=Runtime(),
        clock=VirtualClock(T0),
    )
    return runner, sessions, events


def _cut(cmd_id: str, start: datetime, end: datetime) -> Command:
    return Command(
        cmd_id=cmd_id, type=CommandType.CUT, issued_at=end, session_id="s-1", start=start, end=end
    )


def test_a_repeated_cmd_id_gets_the_first_answer_and_runs_once() -> None:
    clips = Clips([(T0, T0 + timedelta(minutes=45))])
    ledger = Ledger()
    runner, _, events = _runner(clips, ledger)
    cut = _cut("cut-s-1-0", T0 + timedelta(minutes=5), T0 + timedelta(minutes=6))

    runner.execute(cut)
    runner.execute(cut)
    # A restart: a new runner over the same durable ledger still answers with the first reply.
    restarted, _, events_after = _runner(clips, ledger)
    restarted.execute(cut)

    assert clips.cuts == 1
    assert events.sent[0] == events.sent[1] == events_after.sent[0]
    first = events.said()[0]
    assert first["type"] == EventType.CUT_DONE.value and first["cmd_id"] == "cut-s-1-0"
    assert first["data"]["upload_id"] == upload_id_for("cam-1", "cut-s-1-0")


def test_a_repeated_open_opens_once() -> None:
    runner, sessions, events = _runner(Clips([]))
    opened = Command(
        cmd_id="open-s-1", type=CommandType.OPEN_SESSION, issued_at=T0, session_id="s-1"
    )
    runner.execute(opened)
    runner.execute(opened)
    assert sessions.opened == 1
    assert [e["type"] for e in events.said()] == [EventType.SESSION_STARTED.value] * 2


def test_close_of_a_session_not_open_is_command_failed_not_open() -> None:
    runner, sessions, events = _runner(Clips([]))
    never = Command(cmd_id="close-1", type=CommandType.CLOSE_SESSION, issued_at=T0, session_id="x")
    runner.execute(never)
    assert events.said()[-1]["type"] == EventType.COMMAND_FAILED.value
    assert events.said()[-1]["data"] == {"reason": "not_open"}

    # Closed once already: refused again, saying when it was closed.
    runner.execute(Command(cmd_id="o", type=CommandType.OPEN_SESSION, issued_at=T0, session_id="y"))
    runner.execute(
        Command(cmd_id="c1", type=CommandType.CLOSE_SESSION, issued_at=T0, session_id="y")
    )
    assert events.said()[-1]["type"] == EventType.SESSION_STOPPED.value
    runner.execute(
        Command(cmd_id="c2", type=CommandType.CLOSE_SESSION, issued_at=T0, session_id="y")
    )
    last = events.said()[-1]
    assert last["type"] == EventType.COMMAND_FAILED.value
    assert last["data"] == {"reason": "not_open", "closed_at": sessions.closed["y"].isoformat()}


def test_a_cut_outside_the_recording_is_cut_failed_not_recorded() -> None:
    runner, _, events = _runner(Clips([(T0, T0 + timedelta(minutes=45))]))
    start, end = T0 + timedelta(minutes=44), T0 + timedelta(minutes=46)
    runner.execute(_cut("cut-late", start, end))
    said = events.said()[-1]
    assert said["type"] == EventType.CUT_FAILED.value
    assert said["data"]["reason"] == "not_recorded"
    assert (said["data"]["start"], said["data"]["end"]) == (start.isoformat(), end.isoformat())


def test_a_bad_setting_is_refused_and_a_good_one_applied() -> None:
    runtime = Runtime()
    events = Events()
    runner = CommandRunner(
        sessions=Sessions(),
        clips=Clips([]),
        events=events,
        ledger=Ledger(),
        runtime=runtime,
        clock=VirtualClock(T0),
    )
    runner.execute(
        Command(cmd_id="cfg-1", type=CommandType.CONFIG, issued_at=T0, settings={"nope": 1})
    )
    assert events.said()[-1]["data"]["reason"] == "invalid_setting"
    runner.execute(
        Command(
            cmd_id="cfg-2", type=CommandType.CONFIG, issued_at=T0, settings={"upload_window": 4}
        )
    )
    assert events.said()[-1]["type"] == EventType.CONFIG_APPLIED.value
    assert runtime.runtime.upload_window == 4


def test_the_spool_clip_maker_on_an_empty_spool_says_not_recorded(tmp_path: Path) -> None:
    """The real clip maker over a real (empty) spool and outbox: the window is not on disk."""
    clock = VirtualClock(T0)
    spool, outbox = Spool(tmp_path / "spool"), Outbox(tmp_path / "outbox", clock)
    waited: list[datetime] = []
    pinned: list[tuple[str, str]] = []
    try:
        clips = SpoolClipMaker(
            spool=spool,
            outbox=outbox,
            key=Ed25519PrivateKey.generate(),
            device_id="cam-1",
            chunk_size=65536,
            clock=clock,
            clock_offset_s=lambda: 120.0,
            wait_for_spool=waited.append,
            grab_frame=lambda: (_ for _ in ()).throw(AssertionError("no still wanted")),
            link_upload=lambda upload_id, session_id: pinned.append((upload_id, session_id)),
            on_queued=lambda: None,
        )
        runner, _, events = _runner(clips)
        end = T0 + timedelta(minutes=2)
        runner.execute(_cut("cut-s-1-0", T0, end))
        assert outbox.count() == 0, "nothing queued"
    finally:
        spool.close()
        outbox.close()
    said = events.said()[-1]
    assert said["type"] == EventType.CUT_FAILED.value and said["data"]["reason"] == "not_recorded"
    assert waited == [end + timedelta(seconds=120)], "waits for the window on the device clock"
    assert pinned == [(upload_id_for("cam-1", "cut-s-1-0"), "s-1")]
