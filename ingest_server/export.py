"""The verifiable export of one session or a case of sessions (docs/export.md).

The audit log's hashes are HMACs under a key kept secret, so an outside auditor cannot check
them. An export is therefore vouched for by a key the auditor can check: the server's Ed25519
export key (``Settings.export_key_file``, 32 random bytes made on first use exactly as the
audit key is, ``audit.load_secret``), whose public half a bureau pins. Before it writes a byte
the server walks its own HMAC chain over the span it exports, from the row before the first
exported entry to the head, and refuses if that does not verify.

The archive (a zip, written to a temporary file: clips may be large) holds the clips, photos,
signed manifests exactly as received, the device keys and the server's, each session's
evidence (``evidence.session_evidence``, as the exporting caller may see it: another school's
session a reason names is left out for a school, ``evidence.blind``), every audit entry about
those sessions, their clips, photos and uploads, ``audit/chain.json`` (seq, prev_hash, hash of
every row from the first exported entry to the head), and ``MANIFEST.json`` (every file with its
size and SHA-256, the clips' and photos' index, the head, who exported it and when) with the
server's signature in ``MANIFEST.sig``; plus ``verify.py`` (``export_verify.py`` byte for byte)
and a README.

The export is recorded in the audit log (``audit.record_export``: the archive's SHA-256, one
row per session) and committed before the archive is handed over.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from common.clock import to_utc
from ingest_server import audit, evidence, export_verify
from ingest_server.db import SessionFactory, reader_factory
from ingest_server.evidence import scope
from ingest_server.models import (
    AuditEntry,
    AuditHead,
    ClassSession,
    Clip,
    Device,
    Photo,
    SessionWindow,
    Upload,
)
from ingest_server.store import EvidenceStore

MAX_SESSIONS = 50
COPY_BLOCK = 1024 * 1024
# Audit entries are looked up by subject id in batches (a bound for the IN list).
ID_BATCH = 500
# Temporary archives a crash left behind are removed once this old.
STALE_TEMP_S = 24 * 3600.0
TEMP_PREFIX = ".export-"

README = """classcam 证据导出包 / classcam evidence export
================================================

【中文】
本包由 classcam 服务器导出，包含课堂视频片段（clips/）、讲师照片（photos/）、摄像头签名的
清单（manifests/）、摄像头与服务器的公钥（keys/）、会话证据与判定理由（sessions/）、相关审计
记录（audit/）及其在审计链中的位置证明（audit/chain.json）。MANIFEST.json 列出每个文件的
SHA-256 与大小，MANIFEST.sig 是服务器导出私钥对其的 Ed25519 签名。

核验（离线即可，需 Python 3.11 以上及 cryptography 库：pip install cryptography）：

    python verify.py 本导出包.zip
    python verify.py 本导出包.zip --server-key 主管部门公布的服务器公钥.pem
    python verify.py 本导出包.zip --checkpoint 序号:链头哈希

也可对解压后的目录运行。全部通过时输出“核验通过”并以 0 退出；否则逐一列出有问题的文件
并以非 0 退出。请把输出的服务器公钥指纹与主管部门公布的核对，并把链头与另行记录的链头核对
（说明见 docs/export.md）。verify.py 的源码即 classcam 仓库中的 ingest_server/export_verify.py。

[English]
This archive was exported by a classcam server: classroom clips (clips/), the lecturer's photos
(photos/), the cameras' signed manifests (manifests/), the cameras' and the server's public
keys (keys/), each session's evidence and verdict with its reasons (sessions/), the audit
entries about them (audit/) and the proof of their place in the audit chain
(audit/chain.json). MANIFEST.json lists every file with its SHA-256 and size; MANIFEST.sig is
the server export key's Ed25519 signature of it.

To check it (offline; Python 3.11+ and the cryptography package: pip install cryptography):

    python verify.py this-export.zip
    python verify.py this-export.zip --server-key the-key-the-bureau-published.pem
    python verify.py this-export.zip --checkpoint SEQ:HEAD_HASH --lang en

It also runs on the extracted folder. It prints VERIFIED and exits 0 when everything holds;
otherwise it names each file that does not and exits non-zero. Compare the server key
fingerprint it prints with the one the bureau published, and the chain head with one written
down elsewhere (docs/export.md). verify.py is ingest_server/export_verify.py of the classcam
repository, byte for byte.
"""


class ExportRefused(Exception):
    """The export cannot be made as asked (a session not over, too many, none)."""


class ExportIntegrityError(ExportRefused):
    """What would be exported does not hold up on the server itself (the audit chain does not
    verify over the exported span, or a stored file is not the one recorded): nothing is
    exported, and the operator must look."""


def load_export_key(path: Path, *, create: bool = True) -> Ed25519PrivateKey:
    """The server's export signing key in ``path`` (an Ed25519 seed of 32 random bytes, made
    there on first use with ``create``, mode 0600, like the audit key)."""
    seed = audit.load_secret(path, create=create, what="export signing key")
    return Ed25519PrivateKey.from_private_bytes(seed[: audit.KEY_BYTES])


def public_key_pem(key: Ed25519PrivateKey) -> bytes:
    """The export key's public half as PEM: what ``keys/server-export.pub`` holds and a bureau
    publishes."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_fingerprint(key: Ed25519PrivateKey) -> str:
    """The fingerprint ``verify.py`` prints for this key."""
    return export_verify.fingerprint(key.public_key())


@dataclass(frozen=True)
class ArchiveFacts:
    """What one archive holds, for the audit row and the caller."""

    session_ids: tuple[str, ...]
    clips: int
    photos: int
    entries: int
    head_seq: int
    head_hash: str


@dataclass(frozen=True)
class ExportResult:
    """A finished, recorded archive: its temporary file (the caller moves or sends it, then
    deletes it), a file name to offer, its SHA-256 as recorded in the audit log."""

    path: Path
    filename: str
    sha256: str
    size: int
    facts: ArchiveFacts


class ArchiveWriter:
    """A zip being written, remembering each file's size and SHA-256 for MANIFEST.json; files
    are copied in blocks, never whole in memory."""

    def __init__(self, zf: zipfile.ZipFile, when: datetime) -> None:
        self.zf = zf
        self.date_time = to_utc(when).timetuple()[:6]
        self.files: list[dict[str, Any]] = []

    @contextmanager
    def open(self, name: str, *, compress: bool = True) -> Iterator[_HashingWriter]:
        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        with self.zf.open(info, "w", force_zip64=True) as raw:
            writer = _HashingWriter(raw)
            yield writer
        self.files.append({"path": name, "size": writer.size, "sha256": writer.sha.hexdigest()})

    def add_bytes(self, name: str, data: bytes, *, listed: bool = True) -> None:
        with self.open(name) as out:
            out.write(data)
        if not listed:
            self.files.pop()

    def add_file(self, name: str, source: Path) -> str:
        """Copy ``source`` in (stored, not deflated: video and JPEG do not shrink) and return
        its SHA-256."""
        with self.open(name, compress=False) as out, source.open("rb") as fh:
            while block := fh.read(COPY_BLOCK):
                out.write(block)
        digest: str = self.files[-1]["sha256"]
        return digest


class _HashingWriter:
    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.raw.write(data)
        self.sha.update(data)
        self.size += len(data)


def _entry_json(row: AuditEntry) -> bytes:
    # ``at`` spelt as the HMAC input spells it and ``details`` the exact string hashed, so
    # whoever holds the audit key can recompute the row's hash from this file.
    return _json(
        {
            "seq": row.seq,
            "at": to_utc(row.at).isoformat(),
            "action": row.action,
            "subject_type": row.subject_type,
            "subject_id": row.subject_id,
            "actor": row.actor,
            "details": row.details,
            "prev_hash": row.prev_hash,
            "hash": row.hash,
        }
    )


def _json(value: Any) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode()


def _subjects(
    session_ids: Sequence[str], clips: Sequence[Clip], photos: Sequence[Photo]
) -> set[tuple[str, str]]:
    """The (subject_type, subject_id) pairs whose audit entries the archive carries."""
    return (
        {("session", s) for s in session_ids}
        | {("clip", str(c.id)) for c in clips}
        | {("upload", f"{c.device_id}/{c.upload_id}") for c in clips}
        | {("photo", str(p.id)) for p in photos}
    )


def _entries(db: Session, subjects: set[tuple[str, str]], head_seq: int) -> list[AuditEntry]:
    ids = sorted({subject_id for _, subject_id in subjects})
    found: list[AuditEntry] = []
    for start in range(0, len(ids), ID_BATCH):
        batch = ids[start : start + ID_BATCH]
        query = select(AuditEntry).where(
            AuditEntry.subject_id.in_(batch), AuditEntry.seq <= head_seq
        )
        found += [e for e in db.scalars(query) if (e.subject_type, e.subject_id) in subjects]
    return sorted(found, key=lambda e: e.seq)


def _write_chain(
    db: Session, archive: ArchiveWriter, key: audit.AuditKey, first: int, head: AuditHead
) -> int:
    """Walk the HMAC chain from the row before ``first`` to ``head`` with the audit key while
    writing ``audit/chain.json`` from ``first``; ``ExportIntegrityError`` at the first row that
    does not verify. Returns the rows written."""
    start = max(first - 1, 1)
    expected, prev, written = start, None, 0
    rows = (
        select(AuditEntry)
        .where(AuditEntry.seq >= start, AuditEntry.seq <= head.seq)
        .order_by(AuditEntry.seq)
        .execution_options(yield_per=1000)
    )
    with archive.open(export_verify.CHAIN) as out:
        out.write(b'{"head": ' + json.dumps({"seq": head.seq, "hash": head.hash}).encode())
        out.write(b',\n "columns": ["seq", "prev_hash", "hash"],\n "rows": [')
        for row in db.scalars(rows):
            if row.seq != expected:
                raise ExportIntegrityError(
                    f"audit log: seq {expected} is missing (found {row.seq})"
                )
            if prev is None and row.seq == 1:
                prev = audit.GENESIS
            if prev is not None and row.prev_hash != prev:
                raise ExportIntegrityError(
                    f"audit log: seq {row.seq}'s prev_hash is not seq {row.seq - 1}'s hash"
                )
            fields = (row.action, row.subject_type, row.subject_id, row.actor, row.details)
            digest = audit.entry_hash(key, row.seq, row.at, *fields, row.prev_hash)
            if not hmac.compare_digest(digest, row.hash):
                raise ExportIntegrityError(
                    f"audit log: seq {row.seq} does not verify with the audit key "
                    f"{key.key_id} (edited, or written with another key)"
                )
            if row.seq >= first:
                line = json.dumps([row.seq, row.prev_hash, row.hash])
                out.write((",\n  " if written else "\n  ").encode() + line.encode())
                written += 1
            prev, expected = row.hash, row.seq + 1
        out.write(b"\n ]}\n")
    if head.seq and (expected - 1, prev) != (head.seq, head.hash):
        raise ExportIntegrityError(
            f"audit log ends at seq {expected - 1}, its head is seq {head.seq}: rows cut from "
            "the tail, or the head was edited"
        )
    return written


def _with_commands(db: Session, row: ClassSession, shown: dict[str, Any]) -> dict[str, Any]:
    """The session's evidence with each window's ``cmd_id``: the command the camera answered,
    which its signed manifest names, so ``verify.py`` can tie a window's clip to the window by
    what the camera signed rather than by the server's word. (The session is over: the windows
    and their commands are no longer secret.)"""
    query = select(SessionWindow.idx, SessionWindow.cmd_id).where(
        SessionWindow.session_id == row.id
    )
    commands = {idx: cmd_id for idx, cmd_id in db.execute(query)}
    windows = [w | {"cmd_id": commands.get(w["index"])} for w in shown["windows"]]
    return shown | {"windows": windows}


def _suffix(path: str, default: str) -> str:
    suffix = PurePosixPath(path).suffix.lower()
    return suffix if suffix.isascii() and 1 < len(suffix) <= 6 else default


def _add_clips(
    archive: ArchiveWriter, db: Session, store: EvidenceStore, clips: Sequence[Clip]
) -> list[dict[str, Any]]:
    """Each clip as stored, its manifest exactly as the camera sent it (the signature covers
    those bytes) and its camera's key; returns the clips' index for MANIFEST.json."""
    index, devices = [], set()
    for clip in clips:
        upload = db.get(Upload, (clip.upload_id, clip.device_id))
        if upload is None:
            raise ExportIntegrityError(f"clip {clip.id} has no upload row (its manifest)")
        name = f"clips/{clip.id}{_suffix(clip.path, '.mp4')}"
        stored = partial(evidence.clip_file, store, clip)
        _add_evidence_file(archive, name, stored, clip.path, clip.sha256, f"clip {clip.id}")
        manifest = f"manifests/{clip.device_id}/{clip.upload_id}.json"
        archive.add_bytes(manifest, upload.manifest.encode())
        devices.add(clip.device_id)
        index.append(
            {
                "id": clip.id,
                "session_id": clip.session_id,
                "cmd_id": clip.cmd_id,
                "device_id": clip.device_id,
                "upload_id": clip.upload_id,
                "sha256": clip.sha256,
                "size": clip.size,
                "file": name,
                "manifest": manifest,
            }
        )
    for device_id in sorted(devices):
        device = db.get(Device, device_id)
        if device is None:
            raise ExportIntegrityError(f"device {device_id} is not registered (no key)")
        key_file = f"{export_verify.DEVICE_KEYS}{device_id}.pub"
        archive.add_bytes(key_file, device.public_key.encode() + b"\n")
    return index


def _add_photos(
    archive: ArchiveWriter, store: EvidenceStore, photos: Sequence[Photo]
) -> list[dict[str, Any]]:
    """Each photo as received; returns the photos' index for MANIFEST.json."""
    index = []
    for photo in photos:
        name = f"photos/{photo.id}{_suffix(photo.path, '.jpg')}"
        stored = partial(evidence.photo_file, store, photo)
        _add_evidence_file(archive, name, stored, photo.path, photo.sha256, f"photo {photo.id}")
        index.append(
            {
                "id": photo.id,
                "session_id": photo.session_id,
                "kind": photo.kind,
                "sha256": photo.sha256,
                "file": name,
            }
        )
    return index


def _add_evidence_file(
    archive: ArchiveWriter,
    name: str,
    stored: Callable[[], Path],
    relative: str,
    sha256: str,
    what: str,
) -> None:
    """Copy a stored file in; ``ExportIntegrityError`` unless it still has the SHA-256 it
    arrived with (a damaged store is the operator's to find, not the auditor's)."""
    try:
        digest = archive.add_file(name, stored())
    except (OSError, ValueError) as exc:
        raise ExportIntegrityError(f"{what}: its file cannot be read: {exc}") from exc
    if digest != sha256:
        raise ExportIntegrityError(
            f"{what}: the stored file {relative} has SHA-256 {digest}, it arrived with "
            f"{sha256}: the evidence store is damaged"
        )


def write_archive(
    db: Session,
    store: EvidenceStore,
    rows: Sequence[ClassSession],
    out: IO[bytes],
    *,
    audit_key: audit.AuditKey,
    signing_key: Ed25519PrivateKey,
    now: datetime,
    actor: str,
    reader_scope: ColumnElement[bool],
    lang: str,
    tz: tzinfo,
) -> ArchiveFacts:
    """Write the export of ``rows`` (sessions already admitted for the caller) to ``out``;
    ``reader_scope`` is the caller's (``api.deps.session_scope``), which decides which other
    sessions the reasons may name. ``db`` should read one snapshot (``db.reader_factory``);
    rows appended to the log meanwhile are after the head read here and are left out."""
    if not rows:
        raise ExportRefused("no session to export")
    for row in rows:
        if not evidence.session_over(row, now):
            raise ExportRefused(f"session {row.id} is not over yet: its windows are still secret")
    session_ids = [row.id for row in rows]
    head = db.scalar(
        select(AuditHead)
        .where(AuditHead.id == audit.HEAD_ID)
        .execution_options(populate_existing=True)
    )
    if head is None:
        raise ExportIntegrityError("audit_head is missing: the database was not migrated")
    # Only clips that belong to the sessions (their camera's), not every clip naming them.
    clips = scope.session_clips(db, rows)
    photos = db.scalars(
        select(Photo).where(Photo.session_id.in_(session_ids)).order_by(Photo.id)
    ).all()
    entries = _entries(db, _subjects(session_ids, clips, photos), head.seq)

    reader = evidence.Reader(db, reader_scope)
    with zipfile.ZipFile(out, "w", allowZip64=True) as zf:
        archive = ArchiveWriter(zf, now)
        clip_index = _add_clips(archive, db, store, clips)
        photo_index = _add_photos(archive, store, photos)
        archive.add_bytes(export_verify.SERVER_KEY, public_key_pem(signing_key))
        for row in rows:
            shown = evidence.session_evidence(db, row, reader=reader, now=now, lang=lang, tz=tz)
            archive.add_bytes(f"sessions/{row.id}.json", _json(_with_commands(db, row, shown)))
        for entry in entries:
            archive.add_bytes(f"audit/{entry.seq}.json", _entry_json(entry))
        first = entries[0].seq if entries else head.seq
        chain_rows = _write_chain(db, archive, audit_key, first, head)
        archive.add_bytes("verify.py", Path(export_verify.__file__).read_bytes())
        archive.add_bytes("README.txt", README.encode())
        manifest_bytes = _json(
            {
                "format": export_verify.FORMAT,
                "exported_at": to_utc(now).isoformat(),
                "exported_by": actor,
                "sessions": session_ids,
                "audit_head": {"seq": head.seq, "hash": head.hash},
                "chain_rows": chain_rows,
                "server_key_fingerprint": key_fingerprint(signing_key),
                "clips": clip_index,
                "photos": photo_index,
                "audit_entries": [e.seq for e in entries],
                "files": sorted(archive.files, key=lambda f: f["path"]),
            }
        )
        archive.add_bytes(export_verify.MANIFEST, manifest_bytes, listed=False)
        signature = signing_key.sign(manifest_bytes)
        archive.add_bytes(
            export_verify.SIGNATURE, base64.b64encode(signature) + b"\n", listed=False
        )
    return ArchiveFacts(
        tuple(session_ids), len(clips), len(photos), len(entries), head.seq, head.hash
    )


def _remove_stale(directory: Path) -> None:
    cutoff = time.time() - STALE_TEMP_S
    for path in directory.glob(f"{TEMP_PREFIX}*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            continue  # another export's cleanup took it


def export_sessions(
    factory: SessionFactory,
    store: EvidenceStore,
    rows: Sequence[ClassSession],
    *,
    directory: Path,
    audit_key: audit.AuditKey,
    signing_key: Ed25519PrivateKey,
    now: datetime,
    actor: str,
    reader_scope: ColumnElement[bool],
    lang: str,
    tz: tzinfo,
) -> ExportResult:
    """Write the archive of ``rows`` to a temporary file in ``directory``, record it in the
    audit log (its SHA-256, one row per session) and commit: only then may it be handed over.
    The caller moves or sends the file and deletes it afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale(directory)
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".zip", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(fd, "w+b") as out, reader_factory(factory)() as db:
            facts = write_archive(
                db,
                store,
                rows,
                out,
                audit_key=audit_key,
                signing_key=signing_key,
                now=now,
                actor=actor,
                reader_scope=reader_scope,
                lang=lang,
                tz=tz,
            )
            out.flush()
            os.fsync(out.fileno())
        with factory.begin() as write:
            digest = audit.record_export(
                write,
                "session",
                list(facts.session_ids),
                actor,
                path,
                "zip",
                # Each session's row names that session only (its subject): a case may join
                # several institutions' sessions, and one institution's export of its own
                # session carries that row. The archive's SHA-256 links the case's rows.
                {
                    "case_sessions": len(facts.session_ids),
                    "audit_head": {"seq": facts.head_seq, "hash": facts.head_hash},
                },
            )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    stamp = to_utc(now).strftime("%Y%m%dT%H%M%SZ")
    label = facts.session_ids[0] if len(facts.session_ids) == 1 else f"case-{digest[:12]}"
    filename = f"classcam-export-{label}-{stamp}.zip"
    return ExportResult(path, filename, digest, path.stat().st_size, facts)
