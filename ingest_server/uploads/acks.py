"""Ack policy: what the device is told, and when.

An answer is a ``Reply`` until everything before it is durable; ``ack_message`` turns it into
the ``Ack`` to publish (``missing`` computed then, from durable ranges). A refusal of the upload
is ``rejected``; a refused chunk or a bad assembled file is ``missing`` with the reason, so the
device sends those bytes again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from common import topics
from common.ranges import Range
from common.schemas import Ack, AckReplyTo, AckState, RejectReason
from ingest_server.errors import ChunkRefused, Refusal

MAX_DETAIL = 500


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish: an ``Ack`` on ``classcam/v1/down/{device}/ack`` (or an event
    ack)."""

    topic: str
    payload: bytes
    qos: int = 1


@dataclass(frozen=True, slots=True)
class Reply:
    """An ack to send once everything before it is durable; ``missing`` None = compute then."""

    device_id: str
    upload_id: str
    state: AckState
    reply_to: AckReplyTo
    reason: RejectReason | None = None
    detail: str | None = None
    missing: list[Range] | None = None


def short(text: str) -> str:
    """``text`` cut to what an ack or a rejection row carries."""
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def chunk_with_bad_offset(topic: str) -> topics.UpTopic | None:
    """A chunk topic whose only fault is its offset: its device can still be told."""
    parts = topic.split("/")
    if len(parts) != 8 or "/".join(parts[:3]) != topics.UP or parts[4:7:2] != ["file", "chunk"]:
        return None
    device_id, upload_id = parts[3], parts[5]
    if not (topics.ID_PATTERN.fullmatch(device_id) and topics.ID_PATTERN.fullmatch(upload_id)):
        return None
    return topics.UpTopic(device_id, topics.UpKind.FILE_CHUNK, upload_id, None)


def refusal_reply(refusal: Refusal, up: topics.UpTopic, reply_to: AckReplyTo) -> Reply:
    """The answer to a refused message: ``missing`` for a chunk, ``rejected`` otherwise."""
    state = AckState.MISSING if isinstance(refusal, ChunkRefused) else AckState.REJECTED
    return Reply(
        up.device_id,
        up.upload_id or "",
        state,
        reply_to,
        reason=refusal.reason,
        detail=short(refusal.detail),
    )


def rejected_before(
    device_id: str, upload_id: str, reply_to: AckReplyTo, reason: str | None
) -> Reply:
    """The answer about an upload rejected earlier: rejected again, for the same reason."""
    return Reply(
        device_id,
        upload_id,
        AckState.REJECTED,
        reply_to,
        reason=RejectReason(reason) if reason else None,
        detail="this upload was rejected before",
    )


def ack_message(reply: Reply, missing: list[Range] | None, now: datetime) -> Outgoing:
    """The ack to publish for ``reply``, with the ranges still ``missing``."""
    ack = Ack(
        upload_id=reply.upload_id,
        state=reply.state,
        reply_to=reply.reply_to,
        missing=missing or [],
        reason=reply.reason,
        detail=reply.detail,
        server_time=now,
    )
    return Outgoing(topics.ack(reply.device_id), ack.to_bytes(), 1)
