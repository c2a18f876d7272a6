"""Executing server commands exactly once and answering each with an event naming its cmd_id.

A command seen again (the broker redelivers after a reconnect; the server retries) is answered
with the same reply, not executed twice. Replies are durable events, so a power cut between
doing and answering costs a repeat answer, never a lost one.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.commands import Command, CommandType
from common.errors import ProtocolError
from common.schemas import EventType, decode
from edge_agent.clips import ClipRequest, cut_and_enqueue, enqueue_snapshot
from edge_agent.errors import AgentError, CutError

if TYPE_CHECKING:
    from edge_agent.service import AgentService

log = logging.getLogger(__name__)


class RuntimeSettings(BaseModel):
    """What a ``config`` command may change at run time; unknown names are refused."""

    model_config = ConfigDict(extra="forbid")
    heartbeat_interval_s: float = Field(30.0, ge=1, le=3600)
    upload_rate_limit_bytes_per_s: int = Field(0, ge=0)
    upload_window: int = Field(16, ge=1, le=1000)


def upload_id_for(device_id: str, cmd_id: str) -> str:
    """The upload id of the clip ``device_id`` makes for ``cmd_id``: stable, so a repeated
    command finds the clip it already cut; the device's own, so another device answering the
    same command never lands on it."""
    digest = hashlib.sha256()
    for part in (device_id, cmd_id):
        raw = part.encode()
        digest.update(len(raw).to_bytes(4, "big") + raw)  # length-prefixed: no two splits alike
    return digest.hexdigest()[:32]


class CommandRunner:
    def __init__(self, service: AgentService) -> None:
        self.service = service
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def on_message(self, topic: str, payload: bytes) -> Command | None:
        """Parse a command off the wire; a bad one is counted, logged and answered if possible."""
        try:
            return decode(Command, payload)
        except ProtocolError as exc:
            self.service.link.counters["bad_command"] += 1
            log.warning("bad command: %s", exc)
            self.service.emit(
                EventType.COMMAND_FAILED, data={"reason": "invalid_command", "detail": str(exc)}
            )
            return None

    def execute(self, cmd: Command) -> None:
        """Run ``cmd`` once; answer repeats with the first answer."""
        svc = self.service
        seen, reply = svc.state.command_reply(cmd.cmd_id)
        if seen and reply is not None:
            svc.state.push_event(reply)
            svc.state.command_answered(cmd.cmd_id, reply)
            svc.events_ready.set()
            return
        with self._lock:
            if cmd.cmd_id in self._running:
                return
            self._running.add(cmd.cmd_id)
        try:
            svc.state.command_received(cmd.cmd_id, cmd.type.value, svc.clock.now())
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
        payload = svc.emit(event_type, cmd_id=cmd.cmd_id, session_id=session_id, data=data)
        svc.state.command_answered(cmd.cmd_id, payload)

    def _run(self, cmd: Command) -> tuple[EventType, dict[str, Any], str | None]:
        svc = self.service
        if cmd.type == CommandType.OPEN_SESSION:
            assert cmd.session_id
            planned_end = (
                cmd.issued_at + timedelta(seconds=cmd.duration_s) if cmd.duration_s else None
            )
            opened = svc.open_session(
                cmd.session_id,
                source="command",
                windows=cmd.windows,
                planned_end=planned_end,
                cmd_id=cmd.cmd_id,
            )
            return EventType.SESSION_STARTED, opened, cmd.session_id
        if cmd.type == CommandType.CLOSE_SESSION:
            assert cmd.session_id
            closed = svc.close_session(cmd.session_id, reason="command")
            if closed is None:
                # Saying "stopped" here would close on the server a class this camera has not
                # recorded yet, and drop it from the timetable.
                row = svc.state.session(cmd.session_id)
                data: dict[str, Any] = {"reason": "not_open"}
                if row is not None and row.closed_at is not None:
                    data["closed_at"] = row.closed_at.isoformat()
                return EventType.COMMAND_FAILED, data, cmd.session_id
            return EventType.SESSION_STOPPED, closed, cmd.session_id
        if cmd.type == CommandType.CUT:
            return self._cut(cmd)
        if cmd.type == CommandType.SNAPSHOT:
            return self._snapshot(cmd)
        return self._config(cmd)

    def _cut(self, cmd: Command) -> tuple[EventType, dict[str, Any], str | None]:
        svc = self.service
        assert cmd.start and cmd.end
        upload_id = upload_id_for(svc.config.device_id, cmd.cmd_id)
        existing = svc.outbox.get(upload_id)
        if existing is None:
            offset = svc.offset.or_zero()
            svc.wait_for_spool(cmd.end + timedelta(seconds=offset))
            request = ClipRequest(
                start=cmd.start,
                end=cmd.end,
                session_id=cmd.session_id,
                cmd_id=cmd.cmd_id,
                clock_offset_s=offset,
            )
            if cmd.session_id:
                # Before the clip exists: an upload finished in between must still count
                # against its session's pin.
                svc.state.link_upload(upload_id, cmd.session_id)
            try:
                existing = cut_and_enqueue(
                    svc.spool,
                    svc.outbox,
                    svc.key,
                    request,
                    device_id=svc.config.device_id,
                    chunk_size=svc.config.upload.chunk_size,
                    clock=svc.clock,
                    upload_id=upload_id,
                )
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
            svc.uploads_ready.set()
        return (
            EventType.CUT_DONE,
            {"upload_id": upload_id, "size": existing.size, "sha256": existing.sha256},
            cmd.session_id,
        )

    def _snapshot(self, cmd: Command) -> tuple[EventType, dict[str, Any], str | None]:
        svc = self.service
        upload_id = upload_id_for(svc.config.device_id, cmd.cmd_id)
        item = svc.outbox.get(upload_id)
        if item is None:
            frame = svc.grab_frame()
            import cv2  # only snapshots need OpenCV here

            ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 85])
            if not ok:
                raise AgentError("JPEG encoding of the snapshot failed")
            item = enqueue_snapshot(
                svc.outbox,
                svc.key,
                jpeg.tobytes(),
                frame.wall,
                width=frame.image.shape[1],
                height=frame.image.shape[0],
                device_id=svc.config.device_id,
                cmd_id=cmd.cmd_id,
                chunk_size=svc.config.upload.chunk_size,
                clock=svc.clock,
                upload_id=upload_id,
            )
            svc.uploads_ready.set()
        return (
            EventType.SNAPSHOT_DONE,
            {"upload_id": upload_id, "size": item.size, "sha256": item.sha256},
            None,
        )

    def _config(self, cmd: Command) -> tuple[EventType, dict[str, Any], str | None]:
        svc = self.service
        merged = svc.runtime.model_dump() | cmd.settings
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
        svc.apply_runtime(runtime)
        return EventType.CONFIG_APPLIED, {"settings": runtime.model_dump()}, None
