"""Versioned pydantic models of every v1 payload (DESIGN.md §2).

Each model validates itself; ``decode()`` turns raw MQTT payload bytes into a model or raises
``ProtocolError`` with the reason, so a consumer loop can count and log a bad message and go on.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from common.errors import ProtocolError
from common.ranges import chunk_count
from common.topics import validate_id

SCHEMA_VERSION = 1
MAX_CHUNK_SIZE = 1024 * 1024
# Beyond these a device's word is nonsense, not a clock or a clip (and dates would overflow).
MAX_CLOCK_OFFSET_S = 400 * 86400
MAX_CLIP_S = 24 * 3600

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
SafeId = Annotated[str, AfterValidator(validate_id)]
ByteRange = tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]


class Message(BaseModel):
    """Base of every payload: frozen, strict about unknown fields, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1

    def to_bytes(self) -> bytes:
        """The payload as compact UTF-8 JSON."""
        return self.model_dump_json().encode()


M = TypeVar("M", bound=Message)


def decode(model: type[M], payload: bytes) -> M:
    """Parse ``payload`` as ``model``; raise ``ProtocolError`` naming what is wrong."""
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        kind = "malformed JSON" if first["type"] == "json_invalid" else "invalid"
        raise ProtocolError(f"{kind} {model.__name__}: {where}: {first['msg']}") from exc


class ClipKind(StrEnum):
    CLIP = "clip"
    SNAPSHOT = "snapshot"
    REFERENCE = "reference"


class Manifest(Message):
    """What a device says about a file it is about to upload; signed with its Ed25519 key.

    ``requested_*`` is the window the server asked for, in server UTC; ``cut_*`` are the bounds
    actually cut, in the device's clock (snapped to keyframes), so skew stays visible.
    """

    upload_id: SafeId
    device_id: SafeId
    kind: ClipKind = ClipKind.CLIP
    session_id: SafeId | None = None
    cmd_id: SafeId | None = None
    requested_start: AwareDatetime | None = None
    requested_end: AwareDatetime | None = None
    cut_start: AwareDatetime
    cut_end: AwareDatetime
    clock_offset_s: float = Field(default=0.0, ge=-MAX_CLOCK_OFFSET_S, le=MAX_CLOCK_OFFSET_S)
    size: int = Field(gt=0)
    sha256: Sha256Hex
    chunk_size: int = Field(gt=0, le=MAX_CHUNK_SIZE)
    chunk_sha256: list[Sha256Hex]
    content_type: Literal["video/mp4", "image/jpeg"] = "video/mp4"
    # Stored in a 32-character column: a longer name is the message's fault, refused here
    # rather than failing the insert.
    codec: str = Field(default="h264", min_length=1, max_length=32)
    duration_s: float = Field(ge=0, le=MAX_CLIP_S)
    frames: int = Field(ge=0, le=MAX_CLIP_S * 240)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    created_at: AwareDatetime

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        expected = chunk_count(self.size, self.chunk_size)
        if len(self.chunk_sha256) != expected:
            raise ValueError(
                f"chunk_sha256 lists {len(self.chunk_sha256)} chunks, size needs {expected}"
            )
        if self.cut_end < self.cut_start:
            raise ValueError("cut_end is before cut_start")
        if (self.requested_start is None) != (self.requested_end is None):
            raise ValueError("requested_start and requested_end go together")
        if (
            self.requested_start
            and self.requested_end
            and self.requested_end <= self.requested_start
        ):
            raise ValueError("requested_end must be after requested_start")
        return self


class Fin(Message):
    """End of transfer: the server verifies the whole file when it sees this."""

    upload_id: SafeId
    size: int = Field(gt=0)
    sha256: Sha256Hex


class AckState(StrEnum):
    MISSING = "missing"
    COMPLETE = "complete"
    REJECTED = "rejected"


class RejectReason(StrEnum):
    MALFORMED_JSON = "malformed_json"
    INVALID_MANIFEST = "invalid_manifest"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_MISMATCH = "device_mismatch"
    SIGNATURE_INVALID = "signature_invalid"
    UPLOAD_CONFLICT = "upload_conflict"
    UNKNOWN_UPLOAD = "unknown_upload"
    BAD_OFFSET = "bad_offset"
    OVERSIZE_CHUNK = "oversize_chunk"
    CHUNK_HASH_MISMATCH = "chunk_hash_mismatch"
    SIZE_MISMATCH = "size_mismatch"
    HASH_MISMATCH = "hash_mismatch"
    STORAGE_ERROR = "storage_error"
    DEVICE_DISABLED = "device_disabled"
    SERVER_BUSY = "server_busy"
    TOO_MANY_UPLOADS = "too_many_uploads"  # the device holds too many uploads open at once
    UPLOAD_EXPIRED = "upload_expired"  # no chunk for too long: send init again to restart


# Refusals that can pass (a camera installed before it was registered, a device re-enabled, a
# server short of space or workers): the device keeps the clip and tries again later, with
# capped backoff. Every other refusal is final for that upload.
RETRYABLE_REJECTIONS = frozenset(
    {
        RejectReason.UNKNOWN_DEVICE,
        RejectReason.DEVICE_DISABLED,
        RejectReason.SERVER_BUSY,
        RejectReason.STORAGE_ERROR,
        RejectReason.TOO_MANY_UPLOADS,
        RejectReason.UPLOAD_EXPIRED,
    }
)


class AckReplyTo(StrEnum):
    INIT = "init"
    CHUNK = "chunk"
    FIN = "fin"


class Ack(Message):
    """The server's word on an upload.

    ``missing``: the byte ranges still to send (all of them for a new upload). ``complete``: the
    clip is verified, stored and recorded; only now may the device forget it. ``rejected``: the
    upload will never be accepted (``reason`` says why). A ``missing`` ack may also carry a
    ``reason`` when a single chunk was refused (bad offset, oversize, wrong hash).
    ``reply_to`` names the message answered, so a device can tell the answer to its ``fin``
    from a chunk-level complaint that arrived meanwhile.
    """

    upload_id: SafeId
    state: AckState
    reply_to: AckReplyTo
    missing: list[ByteRange] = Field(default_factory=list)
    reason: RejectReason | None = None
    detail: str | None = None
    server_time: AwareDatetime


class EventType(StrEnum):
    SESSION_STARTED = "session_started"
    SESSION_STOPPED = "session_stopped"
    RECORDING_GAP = "recording_gap"
    CUT_DONE = "cut_done"
    CUT_FAILED = "cut_failed"
    UPLOAD_COMPLETE = "upload_complete"
    UPLOAD_REJECTED = "upload_rejected"
    SNAPSHOT_DONE = "snapshot_done"
    CONFIG_APPLIED = "config_applied"
    COMMAND_FAILED = "command_failed"
    CAMERA_LOST = "camera_lost"
    CAMERA_RESTORED = "camera_restored"
    STORAGE_LOW = "storage_low"
    ERROR = "error"


class Event(Message):
    """Something that happened on a device; answers a command when ``cmd_id`` is set.

    ``at`` and every time in ``data`` are in the device's clock; ``clock_offset_s`` is the
    device clock minus the server clock as the device estimated it then (``None``: no estimate
    yet). The server stores server time (``at - clock_offset_s``) and shows the skew.
    """

    event_id: SafeId
    device_id: SafeId
    type: EventType
    at: AwareDatetime
    clock_offset_s: float | None = Field(
        default=None, ge=-MAX_CLOCK_OFFSET_S, le=MAX_CLOCK_OFFSET_S
    )
    cmd_id: SafeId | None = None
    session_id: SafeId | None = None
    data: dict[str, Any] = Field(default_factory=dict)


MAX_REFUSAL_TEXT = 200


class EventAck(Message):
    """The server's word that the event ``event_id`` is stored (sent after its commit, again
    for a repeat): only now may the device forget it.

    With ``refused`` set, the server will never store it (it cannot read it as an event, it
    names another device, or its type is newer than the server): the device sets it aside
    instead of sending it again for ever. Left out of the JSON when unset, so an agent that
    predates it still reads every ordinary ack."""

    event_id: SafeId
    server_time: AwareDatetime
    refused: str | None = Field(default=None, max_length=MAX_REFUSAL_TEXT)

    def to_bytes(self) -> bytes:
        """The payload as compact UTF-8 JSON, without ``refused`` when unset."""
        return self.model_dump_json(exclude_none=True).encode()


def event_id_of(payload: bytes) -> str | None:
    """The ``event_id`` an event payload names, read without validating the rest (an event the
    reader cannot decode still has an id to answer by); ``None`` when none can be read."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    value = data.get("event_id") if isinstance(data, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return validate_id(value)
    except ValueError:
        return None


class StatusState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class Status(Message):
    """Retained presence; the will message carries ``offline``."""

    device_id: SafeId
    state: StatusState
    at: AwareDatetime | None = None
    firmware: str | None = None


def canonical_json(data: dict[str, Any]) -> bytes:
    """Deterministic bytes of a JSON object: sorted keys, no spaces, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def window_bounds(manifest: Manifest) -> tuple[datetime, datetime] | None:
    """The requested window of a manifest, when it has one."""
    if manifest.requested_start and manifest.requested_end:
        return manifest.requested_start, manifest.requested_end
    return None
