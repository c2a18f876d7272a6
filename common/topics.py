"""Every MQTT topic of protocol v1 is built and parsed here (DESIGN.md §2).

Device → server topics live under ``classcam/v1/up/{device}``, server → device under
``classcam/v1/down/{device}``. The device id is also the MQTT username and client id, so the
broker ACL can confine each device to its own subtree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from common.errors import TopicError

PREFIX = "classcam/v1"
UP = f"{PREFIX}/up"
DOWN = f"{PREFIX}/down"

# Ids appear in topics: no wildcards, no separators, bounded length.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SHARED_GROUP = "ingest"


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a safe topic segment, else raise ``ValueError``."""
    if not ID_PATTERN.fullmatch(value):
        raise ValueError(f"{what} must match {ID_PATTERN.pattern}, got {value!r}")
    return value


class UpKind(StrEnum):
    STATUS = "status"
    HEARTBEAT = "heartbeat"
    EVENT = "event"
    FILE_INIT = "init"
    FILE_CHUNK = "chunk"
    FILE_FIN = "fin"


def status(device_id: str) -> str:
    return f"{UP}/{validate_id(device_id, 'device id')}/status"


def heartbeat(device_id: str) -> str:
    return f"{UP}/{validate_id(device_id, 'device id')}/heartbeat"


def event(device_id: str) -> str:
    return f"{UP}/{validate_id(device_id, 'device id')}/event"


def _file(device_id: str, upload_id: str) -> str:
    return f"{UP}/{validate_id(device_id, 'device id')}/file/{validate_id(upload_id, 'upload id')}"


def file_init(device_id: str, upload_id: str) -> str:
    return f"{_file(device_id, upload_id)}/init"


def file_chunk(device_id: str, upload_id: str, offset: int) -> str:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return f"{_file(device_id, upload_id)}/chunk/{offset}"


def file_fin(device_id: str, upload_id: str) -> str:
    return f"{_file(device_id, upload_id)}/fin"


def cmd(device_id: str) -> str:
    return f"{DOWN}/{validate_id(device_id, 'device id')}/cmd"


def schedule(device_id: str) -> str:
    return f"{DOWN}/{validate_id(device_id, 'device id')}/schedule"


def ack(device_id: str) -> str:
    return f"{DOWN}/{validate_id(device_id, 'device id')}/ack"


def event_ack(device_id: str) -> str:
    """The server's word that an event is stored (after commit): the device may forget it."""
    return f"{DOWN}/{validate_id(device_id, 'device id')}/event_ack"


def down_all(device_id: str) -> str:
    """What a device subscribes to: everything addressed to it."""
    return f"{DOWN}/{validate_id(device_id, 'device id')}/#"


def up_all(shared_group: str | None = SHARED_GROUP) -> str:
    """What an ingest worker subscribes to; a shared subscription when ``shared_group`` is set."""
    return f"$share/{shared_group}/{UP}/#" if shared_group else f"{UP}/#"


@dataclass(frozen=True, slots=True)
class UpTopic:
    """A parsed device → server topic."""

    device_id: str
    kind: UpKind
    upload_id: str | None = None
    offset: int | None = None


def parse_up(topic: str) -> UpTopic:
    """Parse a device → server topic, raising ``TopicError`` for anything else."""
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:3]) != UP:
        raise TopicError(topic, f"not under {UP}/")
    device_id = parts[3]
    if not ID_PATTERN.fullmatch(device_id):
        raise TopicError(topic, "invalid device id")
    rest = parts[4:]
    if len(rest) == 1 and rest[0] in (UpKind.STATUS, UpKind.HEARTBEAT, UpKind.EVENT):
        return UpTopic(device_id, UpKind(rest[0]))
    if len(rest) >= 3 and rest[0] == "file":
        upload_id = rest[1]
        if not ID_PATTERN.fullmatch(upload_id):
            raise TopicError(topic, "invalid upload id")
        if len(rest) == 3 and rest[2] in (UpKind.FILE_INIT, UpKind.FILE_FIN):
            return UpTopic(device_id, UpKind(rest[2]), upload_id)
        if len(rest) == 4 and rest[2] == UpKind.FILE_CHUNK:
            raw = rest[3]
            if not raw.isdigit() or len(raw) > 15:
                raise TopicError(topic, "chunk offset is not a non-negative integer")
            return UpTopic(device_id, UpKind.FILE_CHUNK, upload_id, int(raw))
    raise TopicError(topic, "unknown message kind")
