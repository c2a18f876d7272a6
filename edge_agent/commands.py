"""Executing server commands exactly once and answering each with an event naming its cmd_id.

A command seen again (the broker redelivers after a reconnect; the server retries) is answered
with the same reply, not executed twice. Replies are durable events, so a power cut between
doing and answering costs a repeat answer, never a lost one.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from common.clock import Clock
from common.commands import Command, CommandType
from common.errors import ProtocolError
from common.schemas import EventType, decode
from edge_agent.clips import upload_id_for
from edge_agent.errors import CutError
from edge_agent.ports import (
    ClipMaker,
    CommandLedger,
    EventSink,
    MadeClip,
    RuntimeControl,
    RuntimeSettings,
    SessionControl,
)

__all__ = ["CommandRunner", "RuntimeSettings", "upload_id_for"]

log = logging.getLogger(__name__)

Reply = tuple[EventType, dict[str, Any], str | None]  # event type, its data, its session


class CommandRunner:
    """Runs each server command through the ports it needs, and answers it exactly once."""

    def __init__(
        self,
        *,
        sessions: SessionControl,
        clips: ClipMaker,
        events: EventSink,
        ledger: CommandLedger,
        runtime: RuntimeControl,
        clock: Clock,
        counters: MutableMapping[str, int] | None = None,
    ) -> None:
        self.sessions = sessions
        self.clips = clips
        self.events = events
        self.ledger = ledger
        self.runtime_control = runtime
        self.clock = clock
        self.counters: MutableMapping[str, int] = counters if counters is not None else Counter()
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def on_message(self, topic: str, payload: bytes) -> Command | None:
        """Parse a command off the wire; a bad one is counted, logged and answered if possible."""
        try:
            return decode(Command, payload)
        except ProtocolError as exc:
            self.counters["bad_command"] += 1
            log.warning("bad command: %s", exc)
            self.events.emit(
                EventType.COMMAND_FAILED, data={"reason": "invalid_command", "detail": str(exc)}
            )
            return None

    def execute(self, cmd: Command) -> None:
        """Run ``cmd`` once; answer repeats with the first answer."""
        seen, reply = self.ledger.command_reply(cmd.cmd_id)
        if seen and reply is not None:
            self.events.send_again(reply)
            self.ledger.command_answered(cmd.cmd_id, reply)
            return
        with self._lock:
            if cmd.cmd_id in self._running:
                return
            self._running.add(cmd.cmd_id)
        try:
            self.ledger.command_received(cmd.cmd_id, cmd.type.value, self.clock.now())
            event_type, data, session_id = self._run(cmd)
        except Exception as exc:  # a command must never take the agent down
            log.exception("command %s (%s) failed", cmd.cmd_id, cmd.type)
            event_type, data, session_id = (
                EventType.COMMAND_FAILED,
                {"reason": "error", "detail": str(exc)},
                cmd.session_id,
            )
        finally:
            with self._lock:
                self._running.discard(cmd.cmd_id)
        payload = self.events.emit(event_type, cmd_id=cmd.cmd_id, session_id=session_id, data=data)
        self.ledger.command_answered(cmd.cmd_id, payload)

    def _run(self, cmd: Command) -> Reply:
        if cmd.type == CommandType.OPEN_SESSION:
            assert cmd.session_id
            planned_end = (
                cmd.issued_at + timedelta(seconds=cmd.duration_s) if cmd.duration_s else None
            )
            opened = self.sessions.open_session(
                cmd.session_id,
                source="command",
                windows=cmd.windows,
                planned_end=planned_end,
                cmd_id=cmd.cmd_id,
            )
            return EventType.SESSION_STARTED, opened, cmd.session_id
        if cmd.type == CommandType.CLOSE_SESSION:
            return self._close(cmd)
        if cmd.type == CommandType.CUT:
            return self._cut(cmd)
        if cmd.type == CommandType.SNAPSHOT:
            made = self.clips.snapshot(cmd.cmd_id)
            return EventType.SNAPSHOT_DONE, _clip_data(made), None
        return self._config(cmd)

    def _close(self, cmd: Command) -> Reply:
        assert cmd.session_id
        closed = self.sessions.close_session(cmd.session_id, reason="command")
        if closed is not None:
            return EventType.SESSION_STOPPED, closed, cmd.session_id
        # Saying "stopped" here would close on the server a class this camera has not
        # recorded yet, and drop it from the timetable.
        data: dict[str, Any] = {"reason": "not_open"}
        closed_at = self.sessions.closed_at(cmd.session_id)
        if closed_at is not None:
            data["closed_at"] = closed_at.isoformat()
        return EventType.COMMAND_FAILED, data, cmd.session_id

    def _cut(self, cmd: Command) -> Reply:
        assert cmd.start and cmd.end
        try:
            made = self.clips.cut(cmd.cmd_id, cmd.session_id, cmd.start, cmd.end)
        except CutError as exc:
            return (
                EventType.CUT_FAILED,
                {
                    "reason": "not_recorded",
                    "detail": exc.why,
                    "start": cmd.start.isoformat(),
                    "end": cmd.end.isoformat(),
                },
                cmd.session_id,
            )
        return EventType.CUT_DONE, _clip_data(made), cmd.session_id

    def _config(self, cmd: Command) -> Reply:
        merged = self.runtime_control.runtime.model_dump() | cmd.settings
        try:
            runtime = RuntimeSettings.model_validate(merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = ".".join(str(p) for p in first["loc"]) or "settings"
            return (
                EventType.COMMAND_FAILED,
                {"reason": "invalid_setting", "field": name, "detail": first["msg"]},
                None,
            )
        self.runtime_control.apply_runtime(runtime)
        return EventType.CONFIG_APPLIED, {"settings": runtime.model_dump()}, None


def _clip_data(made: MadeClip) -> dict[str, Any]:
    return {"upload_id": made.upload_id, "size": made.size, "sha256": made.sha256}
