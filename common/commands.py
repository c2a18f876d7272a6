"""Server → device control messages: commands (QoS 1, persistent session) and the retained
timetable (DESIGN.md §1 step 1, §2)."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from common.schemas import Message, SafeId


class CommandType(StrEnum):
    OPEN_SESSION = "open_session"
    CLOSE_SESSION = "close_session"
    CUT = "cut"
    SNAPSHOT = "snapshot"
    CONFIG = "config"


class Command(Message):
    """One command; the device answers with an event naming ``cmd_id``. A command seen twice
    (same ``cmd_id``) is answered again, never executed twice.

    ``issued_at`` is server UTC when sent: the device learns its clock offset from it.
    ``cut``: ``start``/``end`` in server UTC. ``open_session``: ``session_id``, optional preset
    ``duration_s`` and the number of ``windows`` the server will ask for (the recording stays
    pinned until that many cuts are acknowledged, or retention expires).
    ``config``: ``settings``, a flat map of runtime settings (see the agent's ``RuntimeConfig``).
    """

    cmd_id: SafeId
    type: CommandType
    issued_at: AwareDatetime
    session_id: SafeId | None = None
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    duration_s: float | None = Field(default=None, gt=0)
    windows: int = Field(default=3, ge=0, le=100)
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fields_for_type(self) -> Command:
        if self.type in (CommandType.OPEN_SESSION, CommandType.CLOSE_SESSION) and not (
            self.session_id
        ):
            raise ValueError(f"{self.type} needs session_id")
        if self.type == CommandType.CUT:
            if self.start is None or self.end is None:
                raise ValueError("cut needs start and end")
            if self.end <= self.start:
                raise ValueError("cut end must be after start")
        if self.type == CommandType.CONFIG and not self.settings:
            raise ValueError("config needs settings")
        return self


class ScheduledSession(BaseModel):
    """One class session on the timetable, in server UTC."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    session_id: SafeId
    start: AwareDatetime
    duration_s: float = Field(gt=0, le=24 * 3600)
    windows: int = Field(default=3, ge=0, le=100)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.duration_s)


class Schedule(Message):
    """The retained timetable of one device: upcoming (and current) sessions."""

    device_id: SafeId
    issued_at: AwareDatetime
    sessions: list[ScheduledSession] = Field(default_factory=list)
