"""The narrow ports a server command acts through (DESIGN.md §3): session control, clip maker,
event sink, command ledger, runtime control.

``CommandRunner`` sees only these, so it can run against tiny in-memory implementations in a
unit test, and the service wires the real ones in without the runner importing the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from common.schemas import EventType


class RuntimeSettings(BaseModel):
    """What a ``config`` command may change at run time; unknown names are refused."""

    model_config = ConfigDict(extra="forbid")
    heartbeat_interval_s: float = Field(30.0, ge=1, le=3600)
    upload_rate_limit_bytes_per_s: int = Field(0, ge=0)
    upload_window: int = Field(16, ge=1, le=1000)


@dataclass(frozen=True, slots=True)
class MadeClip:
    """A clip (or still) queued for upload: what ``cut_done``/``snapshot_done`` say of it."""

    upload_id: str
    size: int
    sha256: str


class SessionControl(Protocol):
    """Opening and closing class sessions, and what is known of one already closed."""

    def open_session(
        self,
        session_id: str,
        *,
        source: str,
        windows: int,
        planned_end: datetime | None,
        cmd_id: str | None = None,
    ) -> dict[str, Any]:
        """Start recording; return what the ``session_started`` event says."""
        ...

    def close_session(self, session_id: str, *, reason: str) -> dict[str, Any] | None:
        """Stop recording; return what ``session_stopped`` says, ``None`` when not open."""
        ...

    def closed_at(self, session_id: str) -> datetime | None:
        """When ``session_id`` was closed on this device (device clock), if it was."""
        ...


class ClipMaker(Protocol):
    """Makes the clip a ``cut`` asks for and the still a ``snapshot`` asks for, once per
    ``cmd_id``: asked again, it names the one it made the first time."""

    def cut(self, cmd_id: str, session_id: str | None, start: datetime, end: datetime) -> MadeClip:
        """Cut ``[start, end]`` (server UTC) and queue it; raise ``CutError`` when the spool
        does not hold that window."""
        ...

    def snapshot(self, cmd_id: str) -> MadeClip:
        """Take a still of the classroom now and queue it."""
        ...


class EventSink(Protocol):
    """Durable events for the server; the sender delivers them when the link allows."""

    def emit(
        self,
        type_: EventType,
        *,
        cmd_id: str | None = None,
        session_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> bytes:
        """Queue a new event; return its payload."""
        ...

    def send_again(self, payload: bytes) -> None:
        """Queue an event already said once (the first answer to a repeated command)."""
        ...


class CommandLedger(Protocol):
    """The durable record of each command and its answer, so a repeat gets the same one."""

    def command_reply(self, cmd_id: str) -> tuple[bool, bytes | None]:
        """Whether ``cmd_id`` was seen, and its answer if it has one."""
        ...

    def command_received(self, cmd_id: str, type_: str, at: datetime) -> None: ...

    def command_answered(self, cmd_id: str, reply: bytes) -> None: ...


class RuntimeControl(Protocol):
    """The settings a ``config`` command may change, and applying new ones."""

    @property
    def runtime(self) -> RuntimeSettings: ...

    def apply_runtime(self, runtime: RuntimeSettings) -> None: ...
