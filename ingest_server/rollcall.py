"""The online roll call: a camera asked for a still now, and what has come of it.

An inspector asks a classroom's camera for a picture (``POST /api/v1/devices/{id}/snapshot``,
``api/rollcall.py``). The ask is an ordinary ``snapshot`` command kept in ``device_commands``
and sent by the scheduler (again every ``command_resend_s`` until answered, not after
``command_ttl_s``); the agent answers with a signed JPEG uploaded like any clip (a ``Clip`` of
kind ``snapshot`` naming the command) and a ``snapshot_done`` event, or with ``command_failed``.

This module decides from the database what a roll call has come to (``read_outcome``) and
whether a device can be asked at all (``device_presence``, the rule ``GET /devices`` shows),
and keeps, in this process, which roll call of each device is still awaited (``RollCalls``),
so that a second ask while one is pending waits for the same still instead of sending another.
Only the device's own clip answers its roll call: a clip another device signed naming the same
command is not it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.commands import Command, CommandType
from common.schemas import ClipKind, EventType
from ingest_server.models import Clip, DeviceCommand, DeviceEvent, DeviceHealth
from ingest_server.presence import Presence, presence_of

# Roll call commands are told apart from window cuts ("cut-…") and open/close by this prefix.
CMD_PREFIX = "rollcall-"


def device_presence(
    db: Session, device_id: str, now: datetime, heartbeat_timeout_s: float
) -> Presence:
    """``presence_of`` the device's stored health."""
    return presence_of(db.get(DeviceHealth, device_id), now, heartbeat_timeout_s)


def new_cmd_id(now: datetime) -> str:
    """A fresh roll call command id (the device runs a cmd_id once and answers repeats of it
    with its first answer, so every roll call needs its own)."""
    return f"{CMD_PREFIX}{now:%Y%m%d%H%M%S}-{secrets.token_hex(8)}"


def snapshot_command(cmd_id: str, now: datetime) -> Command:
    """The ``snapshot`` command of a roll call, issued now."""
    return Command(cmd_id=cmd_id, type=CommandType.SNAPSHOT, issued_at=now)


class RollCallState(StrEnum):
    UNKNOWN = "unknown"  # no roll call with this id was sent to this device
    PENDING = "pending"  # sent (or about to be), nothing back yet
    ARRIVED = "arrived"  # the device's still is stored
    FAILED = "failed"  # the device answered that it could not take one
    EXPIRED = "expired"  # past command_ttl_s with nothing back: no longer sent


@dataclass(frozen=True, slots=True)
class StoredStill:
    """The still that answered a roll call, as stored."""

    clip_id: int
    path: str
    sha256: str
    size: int
    width: int
    height: int
    taken_at: datetime  # by the device's clock, as its signed manifest says
    stored_at: datetime  # server time


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a roll call has come to, read from the database at one moment."""

    state: RollCallState
    cmd_id: str
    device_id: str
    asked_at: datetime | None = None
    expires_at: datetime | None = None
    sends: int = 0
    still: StoredStill | None = None
    reason: str | None = None  # the device's reason code when it failed
    detail: str | None = None  # and its words

    @property
    def final(self) -> bool:
        """Whether waiting longer can change it (an expired roll call may still be answered by
        a device that was away: a reader asks again, a waiter does not)."""
        return self.state in (RollCallState.ARRIVED, RollCallState.FAILED, RollCallState.UNKNOWN)


def read_outcome(db: Session, device_id: str, cmd_id: str, now: datetime) -> Outcome:
    """What roll call ``cmd_id`` of ``device_id`` has come to. Only a roll call sent to this
    device counts, and only this device's own still (a signed clip of kind ``snapshot`` naming
    the command) or its own ``command_failed`` answers it."""
    command = db.scalar(
        select(DeviceCommand).where(
            DeviceCommand.cmd_id == cmd_id,
            DeviceCommand.device_id == device_id,
            DeviceCommand.type == CommandType.SNAPSHOT.value,
        )
    )
    if command is None:
        return Outcome(RollCallState.UNKNOWN, cmd_id, device_id)
    asked = Outcome(
        RollCallState.PENDING,
        cmd_id,
        device_id,
        asked_at=command.created_at,
        expires_at=command.expires_at,
        sends=command.sends,
    )
    clip = db.scalar(
        select(Clip)
        .where(
            Clip.device_id == device_id,
            Clip.cmd_id == cmd_id,
            Clip.kind == ClipKind.SNAPSHOT.value,
        )
        .order_by(Clip.id)
        .limit(1)
    )
    if clip is not None:
        still = StoredStill(
            clip_id=clip.id,
            path=clip.path,
            sha256=clip.sha256,
            size=clip.size,
            width=clip.width,
            height=clip.height,
            taken_at=clip.cut_start,
            stored_at=clip.stored_at,
        )
        return replace(asked, state=RollCallState.ARRIVED, still=still)
    failed = db.scalar(
        select(DeviceEvent)
        .where(
            DeviceEvent.device_id == device_id,
            DeviceEvent.cmd_id == cmd_id,
            DeviceEvent.type == EventType.COMMAND_FAILED.value,
        )
        .order_by(DeviceEvent.id)
        .limit(1)
    )
    if failed is not None:
        data = _event_data(failed.data)
        return replace(
            asked,
            state=RollCallState.FAILED,
            reason=_text(data.get("reason")) or "error",
            detail=_text(data.get("detail")),
        )
    if command.expires_at <= now:
        return replace(asked, state=RollCallState.EXPIRED)
    return asked


def _event_data(raw: str) -> dict[str, object]:
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: object, limit: int = 500) -> str | None:
    # The device's words, shown to people: bounded, and only if they are words.
    return value[:limit] if isinstance(value, str) and value else None


@dataclass
class PendingCall:
    """A roll call of one device this process sent and still awaits."""

    cmd_id: str
    asked_mono: float
    # Set once the command is kept for sending (or keeping it failed): a second ask for the
    # same device waits for it before it waits for the still. Made, set and awaited on the
    # API's event loop.
    queued: asyncio.Event = field(default_factory=asyncio.Event)
    queue_error: str | None = None


class RollCalls:
    """Which roll call of each device is awaited in this process, and how many requests wait.

    A device has at most one pending roll call: asked again while one is pending (sent less
    than ``join_window_s`` ago and not yet answered), the asker waits for the same still. Past
    the window a new ask sends a new command (the old one may be lost with a device that was
    away; the scheduler has sent it again by then anyway). At most ``max_waiters`` requests
    wait at once, over all devices. Another server process keeps its own (a second ask there
    sends a second command: harmless, the device answers each)."""

    def __init__(
        self,
        max_waiters: int,
        join_window_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_waiters = max_waiters
        self.join_window_s = join_window_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._pending: dict[str, PendingCall] = {}
        self._waiters = 0

    @contextmanager
    def waiting(self) -> Iterator[bool]:
        """Count one waiting request while in the block; yields False (and counts nothing)
        when ``max_waiters`` wait already."""
        with self._lock:
            admitted = self._waiters < self.max_waiters
            if admitted:
                self._waiters += 1
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    self._waiters -= 1

    @property
    def waiters(self) -> int:
        with self._lock:
            return self._waiters

    def claim(self, device_id: str, fresh_cmd_id: str) -> tuple[PendingCall, bool]:
        """The device's pending roll call and False, or a new one under ``fresh_cmd_id`` and
        True (the caller then sends it and sets ``queued``)."""
        now = self._monotonic()
        with self._lock:
            call = self._pending.get(device_id)
            if (
                call is not None
                and call.queue_error is None
                and now - call.asked_mono < self.join_window_s
            ):
                return call, False
            call = self._pending[device_id] = PendingCall(fresh_cmd_id, now)
            return call, True

    def pending(self, device_id: str) -> str | None:
        """The cmd_id of the device's pending roll call, if any."""
        with self._lock:
            call = self._pending.get(device_id)
            return call.cmd_id if call is not None else None

    def settle(self, device_id: str, cmd_id: str) -> None:
        """Roll call ``cmd_id`` has its answer (or could not be sent): the next ask sends a new
        one."""
        with self._lock:
            call = self._pending.get(device_id)
            if call is not None and call.cmd_id == cmd_id:
                del self._pending[device_id]
