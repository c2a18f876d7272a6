"""The audit log: an append-only, hash-chained record of every evidence action.

Each row says what happened (``action``) to what (``subject_type``, ``subject_id``), who did it
(``actor``: ``device:…``, ``lecturer:…``, ``system:…``, or an API caller), when, and the details
as JSON. Its ``hash`` is the SHA-256 of the canonical JSON of those fields and ``prev_hash``, the
hash of the row before it; ``audit_head`` keeps the last seq and hash. ``verify`` walks the chain
and names the first row that was edited, inserted or deleted, or a tail that was cut.

Rows are appended in the caller's transaction and written at its commit under the same lock as
the feed (``ingest_server.feed``), so their seq follows commit order and the chain has no forks.
The database itself refuses UPDATE and DELETE of the log (migration 0008's triggers).

What the chain cannot show on its own: someone who can drop those triggers may rewrite the whole
chain from a row onwards, head included, or cut the tail and move the head back. ``audit
verify`` prints the head's hash; written down outside the database (a daily report, a ticket),
it shows either.

Who records what:

* arrivals (a clip stored, a photo received, an upload rejected) — the flush that writes the
  row (``audit_arrivals``, installed on every session factory by ``ingest_server.db``), whichever
  module commits it;
* judgements — the clip checker (``clip_checked``) and the verdict keeper (``verdict_changed``);
* reads — the API routes that show evidence (``viewed``); exports — ``record_export``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from common.clock import to_utc, utc_now
from ingest_server.feed import defer_to_commit, register_commit_writer
from ingest_server.models import AuditEntry, AuditHead, Clip, Photo, Upload, UploadState

GENESIS = "0" * 64
HEAD_ID = 1


class AuditAction(StrEnum):
    CLIP_STORED = "clip_stored"
    UPLOAD_REJECTED = "upload_rejected"
    CLIP_CHECKED = "clip_checked"
    PHOTO_RECEIVED = "photo_received"
    VERDICT_CHANGED = "verdict_changed"
    VIEWED = "viewed"
    EXPORTED = "exported"


@dataclass(frozen=True)
class _Pending:
    at: datetime
    action: str
    subject_type: str
    subject_id: str
    actor: str
    details: str


def canonical_json(value: object) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_hash(
    seq: int,
    at: datetime,
    action: str,
    subject_type: str,
    subject_id: str,
    actor: str,
    details: str,
    prev_hash: str,
) -> str:
    """The SHA-256 (hex) of a row's fields and the previous row's hash."""
    fields = {
        "seq": seq,
        "at": to_utc(at).isoformat(),
        "action": action,
        "subject_type": subject_type,
        "subject_id": subject_id,
        "actor": actor,
        "details": details,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


def record(
    db: Session,
    action: AuditAction | str,
    subject_type: str,
    subject_id: str,
    actor: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one action to the audit log in ``db``'s transaction (written at its commit, gone
    if it rolls back). Never call it on a read-only session: on SQLite it would write through a
    deferred transaction."""
    defer_to_commit(
        db,
        "audit",
        _Pending(
            at=utc_now(),
            action=str(action),
            subject_type=subject_type,
            subject_id=subject_id[:200],
            actor=actor[:200],
            details=canonical_json(details or {}),
        ),
    )


def _write_audit(db: Session, items: list[_Pending]) -> None:
    # Under the append lock (feed.lock_appends). FOR UPDATE as well: under REPEATABLE READ a
    # stale head fails the transaction instead of forking the chain. populate_existing: a
    # session that loaded the head in an earlier transaction keeps it (no expiry on commit).
    head = db.scalar(
        select(AuditHead)
        .where(AuditHead.id == HEAD_ID)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if head is None:
        raise RuntimeError("audit_head is missing: the database was not migrated (0008)")
    seq, prev = head.seq, head.hash
    for item in items:
        seq += 1
        digest = entry_hash(
            seq,
            item.at,
            item.action,
            item.subject_type,
            item.subject_id,
            item.actor,
            item.details,
            prev,
        )
        db.add(
            AuditEntry(
                seq=seq,
                at=item.at,
                action=item.action,
                subject_type=item.subject_type,
                subject_id=item.subject_id,
                actor=item.actor,
                details=item.details,
                prev_hash=prev,
                hash=digest,
            )
        )
        prev = digest
    head.seq, head.hash = seq, prev


register_commit_writer("audit", _write_audit)


def audit_arrivals(db: Session, flush_context: object) -> None:
    """``after_flush`` hook: record evidence rows this flush inserted (clips, photos) and
    uploads it marked rejected, whichever code path wrote them."""
    for obj in db.new:
        if isinstance(obj, Clip):
            record(
                db,
                AuditAction.CLIP_STORED,
                "clip",
                str(obj.id),
                f"device:{obj.device_id}",
                {
                    "upload_id": obj.upload_id,
                    "kind": obj.kind,
                    "session_id": obj.session_id,
                    "cmd_id": obj.cmd_id,
                    "sha256": obj.sha256,
                    "size": obj.size,
                    "path": obj.path,
                },
            )
        elif isinstance(obj, Photo):
            record(
                db,
                AuditAction.PHOTO_RECEIVED,
                "photo",
                str(obj.id),
                f"lecturer:{obj.lecturer_id}",
                {
                    "session_id": obj.session_id,
                    "kind": obj.kind,
                    "sha256": obj.sha256,
                    "path": obj.path,
                    "taken_at": obj.taken_at,
                    "time_source": obj.time_source,
                    "place_source": obj.place_source,
                },
            )
    for obj in (*db.new, *db.dirty):
        if (
            isinstance(obj, Upload)
            and obj.state == UploadState.REJECTED.value
            and inspect(obj).attrs.state.history.has_changes()
        ):
            record(
                db,
                AuditAction.UPLOAD_REJECTED,
                "upload",
                f"{obj.device_id}/{obj.upload_id}",
                f"device:{obj.device_id}",
                {"reason": obj.reject_reason, "sha256": obj.sha256},
            )


def api_actor(role: str, name: str, token_id: int | None) -> str:
    """How an API caller is named in the log: role, name, and its token's id when it has one."""
    return f"{role}:{name}" + (f"#token{token_id}" if token_id is not None else "")


def record_views(
    factory: sessionmaker[Session], actor: str, route: str, session_ids: list[str]
) -> None:
    """Record that ``actor`` was shown the evidence of these sessions through ``route``, in a
    write transaction of its own (API requests read through sessions that must not write)."""
    if not session_ids:
        return
    with factory.begin() as db:
        for session_id in session_ids:
            record(db, AuditAction.VIEWED, "session", session_id, actor, {"route": route})


def record_export(
    db: Session, subject_type: str, subject_id: str, actor: str, document: bytes, fmt: str
) -> str:
    """Record that ``document`` (the exported bytes, in format ``fmt``) left the system for
    ``actor``; returns its SHA-256, which the export should carry so a copy can be matched to
    this row. (The export routes are issue 10's; they call this.)"""
    digest = hashlib.sha256(document).hexdigest()
    record(
        db,
        AuditAction.EXPORTED,
        subject_type,
        subject_id,
        actor,
        {"format": fmt, "bytes": len(document), "sha256": digest},
    )
    return digest


@dataclass(frozen=True)
class ChainReport:
    """What ``verify`` found: ``ok``, rows checked, the head, and the first bad row if any."""

    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    bad_seq: int | None = None
    problem: str | None = None


def _rows(db: Session) -> Iterator[AuditEntry]:
    yield from db.scalars(
        select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=1000)
    )


def verify(db: Session) -> ChainReport:
    """Walk the chain from its first row to its head; stop at the first row that does not fit."""
    head = db.get(AuditHead, HEAD_ID)
    head_seq, head_hash = (head.seq, head.hash) if head else (-1, "")

    def bad(seq: int | None, problem: str, rows: int) -> ChainReport:
        return ChainReport(False, rows, head_seq, head_hash, seq, problem)

    if head is None:
        return bad(None, "audit_head is missing", 0)
    expected, prev, rows = 1, GENESIS, 0
    for row in _rows(db):
        if row.seq != expected:
            what = "deleted" if row.seq > expected else "inserted or renumbered"
            return bad(row.seq, f"expected seq {expected} here: rows {what}", rows)
        if row.prev_hash != prev:
            return bad(row.seq, "prev_hash is not the previous row's hash", rows)
        fields = (row.action, row.subject_type, row.subject_id, row.actor, row.details)
        if entry_hash(row.seq, row.at, *fields, row.prev_hash) != row.hash:
            return bad(row.seq, "hash does not match the row: edited", rows)
        if row.seq > head_seq:
            return bad(row.seq, f"row past the head (seq {head_seq}): appended outside", rows)
        prev, expected, rows = row.hash, expected + 1, rows + 1
    if (expected - 1, prev) != (head_seq, head_hash):
        return bad(
            expected,
            f"the log ends at seq {expected - 1} but its head is seq {head_seq}: "
            "rows cut from the tail (or the head was edited)",
            rows,
        )
    return ChainReport(True, rows, head_seq, head_hash)
