"""The audit log: an append-only, hash-chained record of every evidence action.

Each row says what happened (``action``) to what (``subject_type``, ``subject_id``), who did it
(``actor``: ``device:…``, ``lecturer:…``, ``system:…``, or an API caller), when, and the details
as JSON. Its ``hash`` is the HMAC-SHA256, keyed by the audit key, of the canonical JSON of those
fields and ``prev_hash``, the hash of the row before it; ``audit_head`` keeps the last seq and
hash. ``verify`` walks the chain and names the first row that was edited, inserted or deleted, or
a tail that was cut.

The key (``Settings.audit_key_file``, by default ``data_dir/audit.key``: 32 random bytes made
on first use, mode 0600, never logged) lives outside the database, so write access to the
database alone cannot add a row that verifies: a plain SHA-256 or a wrongly keyed row is found
like an edited one, even with the head moved forward to it. Every process that appends (ingest,
scheduler and clip checker, verdict keeper, API, CLI) reads the same file through its settings
and hands it to ``db.make_session_factory``, whose sessions carry it (``Session.info``). Keep
the key off the database host and back it up apart from the database: without it the log can
no longer be verified, and whoever holds it and the database can rewrite the chain.

Rows are appended in the caller's transaction and written at its commit under the same lock as
the feed (``ingest_server.feed``), so their seq follows commit order and the chain has no forks.
The database itself refuses UPDATE and DELETE of the log (migration 0008's triggers).

What the chain cannot show on its own: someone who holds the key and can drop those triggers may
rewrite the whole chain from a row onwards, head included, or cut the tail and move the head
back. ``audit verify`` prints the head's hash; written down outside the database (a daily
report, a ticket), it shows either, key or no key.

Who records what:

* arrivals (a clip stored, a photo received, an upload rejected) — the flush that writes the
  row (``audit_arrivals``, installed on every session factory by ``ingest_server.db``), whichever
  module commits it;
* judgements — the clip checker (``clip_checked``) and the verdict keeper (``verdict_changed``);
* reads — the API routes and pages that show evidence, the fleet or the statistics
  (``viewed``); exports — ``record_export``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from common.clock import to_utc
from ingest_server.feed import defer_to_commit, register_commit_writer, session_clock
from ingest_server.models import AuditEntry, AuditHead, Clip, Photo, Upload, UploadState

GENESIS = "0" * 64
HEAD_ID = 1
KEY_BYTES = 32
# Where a session keeps its factory's key (``db.make_session_factory``).
KEY_INFO = "classcam_audit_key"
# Most session ids one ``viewed`` row of a list names (the rest are counted and hashed).
MAX_VIEWED_IDS = 50

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditKey:
    """The secret the rows' HMACs are keyed with. Its repr hides it; ``key_id`` names it."""

    secret: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        """A public name for the key (shown by ``audit verify``; tells nothing of it)."""
        return hmac.new(self.secret, b"classcam audit key id", hashlib.sha256).hexdigest()[:16]


class KeyFileError(RuntimeError):
    """A secret key file is missing (and may not be made here) or holds too few bytes."""


class AuditKeyError(KeyFileError):
    """The key file is missing (and may not be made here) or is not a key."""


def load_secret(
    path: Path,
    *,
    create: bool = True,
    what: str = "audit key",
    error: type[KeyFileError] = KeyFileError,
) -> bytes:
    """The 32 or more secret bytes in ``path`` (``what`` names them in logs and errors); with
    ``create`` and no file there, 32 random bytes are written there first (mode 0600, fsynced;
    made whole under a temporary name and linked in, so two processes starting at once end up
    with the same secret). The audit key and the export signing key (``ingest_server.export``)
    are both made here."""
    if not path.exists():
        if not create:
            raise error(f"no {what} at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            temporary.unlink()
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        log.info("made a new %s at %s", what, path)
    if path.stat().st_mode & 0o077:
        log.warning("the %s %s is readable by others than its owner (chmod 600)", what, path)
    secret = path.read_bytes()
    if len(secret) < KEY_BYTES:
        raise error(f"{path} holds {len(secret)} bytes; a {what} has {KEY_BYTES}")
    return secret


def load_key(path: Path, *, create: bool = True) -> AuditKey:
    """The audit key in ``path``; with ``create`` and no file there, 32 random bytes are written
    there first (``load_secret``)."""
    return AuditKey(load_secret(path, create=create, what="audit key", error=AuditKeyError))


# Sessions from factories made without a key (tests, scripts) write with this one: random per
# process, so such rows never verify against a real key, rather than being forgeable.
_EPHEMERAL_KEY = AuditKey(secrets.token_bytes(KEY_BYTES))


def session_key(db: Session) -> AuditKey:
    """The key ``db``'s factory was given, or this process's throwaway key if none was."""
    key = db.info.get(KEY_INFO)
    if isinstance(key, AuditKey):
        return key
    return _EPHEMERAL_KEY


class AuditAction(StrEnum):
    CLIP_STORED = "clip_stored"
    UPLOAD_REJECTED = "upload_rejected"
    CLIP_CHECKED = "clip_checked"
    PHOTO_RECEIVED = "photo_received"
    VERDICT_CHANGED = "verdict_changed"
    VIEWED = "viewed"
    EXPORTED = "exported"
    # Someone asked a classroom's camera for a still now (api/rollcall.py); the still served
    # is then recorded as VIEWED.
    ROLL_CALL = "roll_call"


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
    key: AuditKey,
    seq: int,
    at: datetime,
    action: str,
    subject_type: str,
    subject_id: str,
    actor: str,
    details: str,
    prev_hash: str,
) -> str:
    """The HMAC-SHA256 (hex), keyed by ``key``, of a row's fields and the previous row's hash."""
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
    return hmac.new(key.secret, canonical_json(fields).encode(), hashlib.sha256).hexdigest()


# Set while a HEAD is answered as its GET (api.head): nothing is shown, so nothing was viewed.
_HEADERS_ONLY: ContextVar[bool] = ContextVar("classcam_audit_headers_only", default=False)
_SHOWN = frozenset({AuditAction.VIEWED.value, AuditAction.EXPORTED.value})


@contextmanager
def headers_only() -> Iterator[None]:
    """Within it, ``record`` leaves out "viewed" and "exported" rows (a HEAD answered as its
    GET sends the headers alone); every other action is still recorded."""
    token = _HEADERS_ONLY.set(True)
    try:
        yield
    finally:
        _HEADERS_ONLY.reset(token)


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
    if _HEADERS_ONLY.get() and str(action) in _SHOWN:
        return
    defer_to_commit(
        db,
        "audit",
        _Pending(
            at=session_clock(db).now(),
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
    seq, prev, key = head.seq, head.hash, session_key(db)
    for item in items:
        seq += 1
        digest = entry_hash(
            key,
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


def record_view(factory: sessionmaker[Session], actor: str, route: str, session_id: str) -> None:
    """Record that ``actor`` was shown one session's evidence through ``route``, in a write
    transaction of its own (API requests read through sessions that must not write)."""
    with factory.begin() as db:
        record(db, AuditAction.VIEWED, "session", session_id, actor, {"route": route})


def record_list_view(
    factory: sessionmaker[Session],
    actor: str,
    route: str,
    query: dict[str, Any],
    session_ids: list[str],
) -> None:
    """Record that ``actor`` was shown a list of sessions: one row per request, whatever its
    length (a read must not cost a write per row under the append lock). It keeps the query,
    how many were shown, the first ``MAX_VIEWED_IDS`` ids and the SHA-256 of all of them (one
    per line), so a copy of the list can be matched to it. Nothing is recorded for an empty
    list."""
    if not session_ids:
        return
    details = {
        "route": route,
        "query": {name: value for name, value in query.items() if value is not None},
        "shown": len(session_ids),
        "ids": session_ids[:MAX_VIEWED_IDS],
        "ids_sha256": hashlib.sha256("\n".join(session_ids).encode()).hexdigest(),
    }
    with factory.begin() as db:
        record(db, AuditAction.VIEWED, "sessions", route, actor, details)


def record_overview(
    factory: sessionmaker[Session], actor: str, route: str, details: dict[str, Any]
) -> None:
    """Record that ``actor`` was shown an overview that is not one session's evidence (the
    fleet, the statistics): one row per request, subject the route, with what was asked and
    how much was shown (``details``), so every page a person opens is in the log."""
    with factory.begin() as db:
        record(db, AuditAction.VIEWED, "overview", route, actor, {"route": route, **details})


def record_export(
    db: Session,
    subject_type: str,
    subject_id: str | Sequence[str],
    actor: str,
    document: bytes | Path,
    fmt: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """Record that ``document`` (the exported bytes, or the file holding them, in format
    ``fmt``) left the system for ``actor``: one row per subject when ``subject_id`` lists
    several (a case of sessions), so each session's own entries show it. Returns the
    document's SHA-256, which the export should carry so a copy can be matched to these rows.
    ``extra`` adds details (an archive's audit head, ``ingest_server.export``): the same for
    every row, so it must not name the other subjects (a case may join institutions)."""
    if isinstance(document, Path):
        sha, size = hashlib.sha256(), 0
        with document.open("rb") as fh:
            while block := fh.read(1024 * 1024):
                sha.update(block)
                size += len(block)
        digest = sha.hexdigest()
    else:
        digest, size = hashlib.sha256(document).hexdigest(), len(document)
    details = {**(extra or {}), "format": fmt, "bytes": size, "sha256": digest}
    for subject in [subject_id] if isinstance(subject_id, str) else subject_id:
        record(db, AuditAction.EXPORTED, subject_type, subject, actor, details)
    return digest


@dataclass(frozen=True)
class ChainReport:
    """What ``verify`` found: ``ok``, rows checked, the head, the key's id, and the first bad
    row if any."""

    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    key_id: str
    bad_seq: int | None = None
    problem: str | None = None


def _rows(db: Session) -> Iterator[AuditEntry]:
    yield from db.scalars(
        select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=1000)
    )


def verify(db: Session, key: AuditKey | None = None) -> ChainReport:
    """Walk the chain from its first row to its head with ``key`` (by default the session's);
    stop at the first row that does not fit."""
    key = key or session_key(db)
    head = db.get(AuditHead, HEAD_ID)
    head_seq, head_hash = (head.seq, head.hash) if head else (-1, "")

    def bad(seq: int | None, problem: str, rows: int) -> ChainReport:
        return ChainReport(False, rows, head_seq, head_hash, key.key_id, seq, problem)

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
        digest = entry_hash(key, row.seq, row.at, *fields, row.prev_hash)
        if not hmac.compare_digest(digest.encode(), row.hash.encode()):
            problem = "hash does not match the row: edited, forged without the key"
            if rows == 0:
                problem += ", or the whole log was written with another key"
            return bad(row.seq, problem, rows)
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
    return ChainReport(True, rows, head_seq, head_hash, key.key_id)
