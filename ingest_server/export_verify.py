#!/usr/bin/env python3
"""Check a classcam evidence export offline: ``python verify.py EXPORT.zip`` (or a folder the
archive was extracted to). 核对 classcam 证据导出包：``python verify.py 导出包.zip``。

This file is copied byte for byte into every archive as ``verify.py``; its source lives in the
classcam repository as ``ingest_server/export_verify.py``. It needs Python 3.11+ and the
``cryptography`` package only (no classcam code), so an auditor runs it on their own machine.

What it checks (docs/export.md says what each proves, and what it does not):

1. ``MANIFEST.sig`` is the server's Ed25519 signature of ``MANIFEST.json``'s exact bytes, with
   the key in ``keys/server-export.pub`` — or, with ``--server-key FILE``, with the key the
   auditor pinned (published by the bureau); the key's fingerprint is printed either way.
2. Every file is listed in ``MANIFEST.json`` with its size and SHA-256, and no file is missing
   or extra.
3. Every signed manifest (``manifests/<device>/<upload>.json``, exactly as the camera sent it)
   verifies with that camera's key (``keys/devices/<device>.pub``) over the same canonical bytes
   the server checks: the JSON object without its ``signature``, keys sorted, no spaces, UTF-8.
4. Each clip's SHA-256 is the one its signed manifest states (and its ``clip_stored`` audit
   entry's); each photo's is the one its ``photo_received`` audit entry states. Each clip's
   index entry has its signed manifest's session, command, device and upload; the manifest
   names an exported session or the command of one of its windows; a window's clip was signed
   for that session and that window's command, asked for a span covering the window.
5. Each audit entry (``audit/<seq>.json``) is the row of that seq in ``audit/chain.json``
   (same ``hash`` and ``prev_hash``), and the chain's links run unbroken from its first row to
   the head the server signed. ``--checkpoint SEQ:HASH`` (repeatable) compares the chain with
   a head written down elsewhere earlier (``classcam-server audit verify`` prints it).

Exit status: 0 when everything holds, 1 naming each file that does not, 2 when the export
cannot be read at all (including a zip with bytes its central directory does not account
for). Output in Simplified Chinese unless ``--lang en``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import json
import os
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = "classcam-export/1"
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.sig"
SERVER_KEY = "keys/server-export.pub"
DEVICE_KEYS = "keys/devices/"
CHAIN = "audit/chain.json"
GENESIS = "0" * 64
BLOCK = 1024 * 1024

# Every sentence a person reads, in zh-CN (default) and English.
MESSAGES: dict[str, tuple[str, str]] = {
    "unreadable": ("无法读取：{detail}", "cannot be read: {detail}"),
    "malformed": ("格式不对：{detail}", "malformed: {detail}"),
    "bad_signature": (
        "签名 MANIFEST.sig 与服务器公钥 {fingerprint} 不符：清单被改动，或不是该服务器签发",
        "its signature MANIFEST.sig does not verify with server key {fingerprint}: the list"
        " was changed, or another server signed it",
    ),
    "not_pinned": (
        "包内服务器公钥 {got} 不是您指定的公钥 {want}",
        "the server key in the archive ({got}) is not the pinned key ({want})",
    ),
    "missing": ("MANIFEST.json 列出了此文件，但包内没有", "listed in MANIFEST.json but missing"),
    "extra": ("MANIFEST.json 未列出此文件（多出的文件）", "not listed in MANIFEST.json (extra)"),
    "size": (
        "大小 {got} 字节，MANIFEST.json 记为 {want}",
        "{got} bytes, MANIFEST.json says {want}",
    ),
    "sha256": (
        "SHA-256 为 {got}，MANIFEST.json 记为 {want}：文件被改动",
        "SHA-256 is {got}, MANIFEST.json says {want}: the file was changed",
    ),
    "device_signature": (
        "设备签名与设备 {device} 的公钥不符",
        "the device signature does not verify with device {device}'s key",
    ),
    "no_device_key": ("缺少设备 {device} 的公钥 {key}", "no key {key} for device {device}"),
    "manifest_name": (
        "清单写的是设备 {device}、上传 {upload}，与文件名不符",
        "the manifest names device {device}, upload {upload}: not its file name",
    ),
    "no_manifest": (
        "片段 {clip} 缺少签名清单 {manifest}",
        "clip {clip} has no signed manifest {manifest}",
    ),
    "clip_manifest_sha": (
        "片段 SHA-256 为 {got}，其签名清单 {manifest} 记为 {want}",
        "the clip's SHA-256 is {got}, its signed manifest {manifest} says {want}",
    ),
    "clip_audit_sha": (
        "片段 SHA-256 为 {got}，审计记录 {entry}（clip_stored）记为 {want}",
        "the clip's SHA-256 is {got}, audit entry {entry} (clip_stored) says {want}",
    ),
    "photo_no_audit": (
        "照片 {photo} 没有 photo_received 审计记录",
        "photo {photo} has no photo_received audit entry",
    ),
    "photo_audit_sha": (
        "照片 SHA-256 为 {got}，审计记录 {entry}（photo_received）记为 {want}",
        "the photo's SHA-256 is {got}, audit entry {entry} (photo_received) says {want}",
    ),
    "entry_name": (
        "文件名为序号 {name}，内容却是序号 {seq}",
        "named seq {name} but holds seq {seq}",
    ),
    "entry_not_in_chain": (
        "序号 {seq} 不在 audit/chain.json 的范围内",
        "seq {seq} is not in audit/chain.json",
    ),
    "entry_hash": (
        "{field} 与 audit/chain.json 第 {seq} 行不符：审计记录被改动",
        "its {field} is not that of row {seq} in audit/chain.json: the entry was changed",
    ),
    "chain_gap": ("链从序号 {a} 跳到 {b}：中间缺行", "the chain jumps from seq {a} to {b}"),
    "chain_link": (
        "第 {seq} 行的 prev_hash 不是第 {prev} 行的 hash：链断开",
        "row {seq}'s prev_hash is not row {prev}'s hash: the chain is broken",
    ),
    "chain_head": (
        "链止于序号 {seq} {hash}，签名的链头却是 {head_seq} {head_hash}",
        "the chain ends at seq {seq} {hash}, but the signed head is seq {head_seq} {head_hash}",
    ),
    "checkpoint": (
        "检查点序号 {seq}：链中为 {got}，您记录的是 {want}：日志在该点之后被改写",
        "checkpoint seq {seq}: the chain has {got}, you wrote down {want}: the log was"
        " rewritten since",
    ),
    "evidence_file": (
        "会话证据提到的{what} {id} 在包内没有对应文件",
        "the session evidence names {what} {id}, which has no file in the archive",
    ),
    "evidence_sha": (
        "会话证据记录{what} {id} 的 SHA-256 为 {want}，文件为 {got}",
        "the session evidence says {what} {id} has SHA-256 {want}, its file has {got}",
    ),
    "no_session": ("缺少会话 {session} 的证据文件", "no evidence file for session {session}"),
    "clip_claim": (
        "MANIFEST.json 记此片段的 {field} 为 {want}，设备签名清单 {manifest} 记为 {got}",
        "MANIFEST.json gives the clip's {field} as {want}, its device-signed manifest"
        " {manifest} says {got}",
    ),
    "clip_foreign": (
        "片段 {clip} 的设备签名清单属于会话 {session}（指令 {cmd}），不是本包导出的会话，"
        "也不对应其任何时段",
        "clip {clip}'s device-signed manifest is for session {session} (command {cmd}): not"
        " a session this archive exports, nor a window of one",
    ),
    "window_clip": (
        "第 {number} 个时段（会话 {session}，指令 {want}）的片段 {clip}，其设备签名清单却属于"
        "会话 {got_session}、指令 {got}",
        "window {number} (session {session}, command {want}) shows clip {clip}, whose"
        " device-signed manifest is for session {got_session}, command {got}",
    ),
    "window_order": (
        "时段列表第 {position} 项的序号为 {index}（编号 {number}），应为序号 {want}（编号"
        " {want_number}）：时段被删除、重复或调换",
        "the windows' entry {position} has index {index} (number {number}), not index {want}"
        " (number {want_number}): a window was dropped, repeated or moved",
    ),
    "window_repeat_cmd_id": (
        "第 {number} 个时段与第 {first} 个时段的指令同为 {value}：一条指令只对应一个时段",
        "window {number} has the same command as window {first} ({value}): a command is"
        " one window's",
    ),
    "window_repeat_clip": (
        "第 {number} 个时段与第 {first} 个时段的片段同为 {value}：一段录像不能证明两个时段",
        "window {number} shows the same clip as window {first} ({value}): one recording"
        " cannot prove two windows",
    ),
    "window_cover": (
        "第 {number} 个时段 {start}–{end} 不在片段 {clip} 签名清单所请求的 {got_start}–{got_end}"
        " 之内",
        "window {number} ({start} to {end}) is not within what clip {clip}'s signed manifest"
        " says was asked for ({got_start} to {got_end})",
    ),
}
NOTES: dict[str, tuple[str, str]] = {
    "fingerprint": (
        "服务器导出公钥指纹：{fingerprint}",
        "server export key fingerprint: {fingerprint}",
    ),
    "pinned": ("（与您指定的公钥一致）", "(the key you pinned)"),
    "unpinned": (
        "（未指定公钥：请将指纹与主管部门公布的核对，或使用 --server-key）",
        "(not pinned: compare the fingerprint with the one the bureau published, or use"
        " --server-key)",
    ),
    "checkpoint_outside": (
        "检查点序号 {seq} 不在本包链的范围（{first}–{last}）内，无法核对",
        "checkpoint seq {seq} is outside this archive's chain ({first}-{last}): not checked",
    ),
    "checkpoint_ok": ("检查点序号 {seq} 与链一致", "checkpoint seq {seq} matches the chain"),
    "ok": ("核验通过", "VERIFIED"),
    "failed": ("核验失败：{count} 个问题", "VERIFICATION FAILED: {count} problem(s)"),
    "summary": (
        "会话 {sessions} 个，片段 {clips} 个，照片 {photos} 张，审计记录 {entries} 条，"
        "链 {rows} 行（序号 {first}–{head_seq}），链头 {head_hash}",
        "{sessions} session(s), {clips} clip(s), {photos} photo(s), {entries} audit entries,"
        " chain of {rows} rows (seq {first}-{head_seq}), head {head_hash}",
    ),
    "exported": ("导出时间 {at}，导出人 {by}", "exported at {at} by {by}"),
}


@dataclass
class Problem:
    """One thing that does not hold, about one file of the export."""

    path: str
    code: str
    params: dict[str, Any] = field(default_factory=dict)

    def text(self, lang: str) -> str:
        zh, en = MESSAGES[self.code]
        return f"{self.path}: {(en if lang == 'en' else zh).format(**self.params)}"


def note(code: str, lang: str, **params: Any) -> str:
    """A sentence of the report (not a problem) in ``lang``."""
    zh, en = NOTES[code]
    return (en if lang == "en" else zh).format(**params)


class Unreadable(Exception):
    """The export as a whole cannot be read (not a zip, not a folder, unsafe names)."""


LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
CENTRAL_HEADER = struct.Struct("<4s24xHHH12x")  # signature, ..., name, extra, comment lengths
END_RECORD = struct.Struct("<4s16xH")  # signature, ..., comment length
ZIP64_LOCATOR_SIZE = 20
DATA_DESCRIPTOR_FLAG = 0x08
ZIP64_EXTRA = 0x0001


def _has_zip64_extra(extra: bytes) -> bool:
    at = 0
    while at + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, at)
        if tag == ZIP64_EXTRA:
            return True
        at += 4 + size
    return False


def zip_layout_problem(fh: BinaryIO, infos: list[zipfile.ZipInfo], start_dir: int) -> str | None:
    """What in the zip's bytes its central directory does not account for, or None.

    A zip reader believes the central directory at the end, which may ignore bytes before the
    first entry or between entries (Python's zipfile even shifts its offsets past prepended
    data). A tool that reads the local headers from the start (a streaming unzip, some viewers)
    would then show a file this script never checked. So every byte must belong to one
    listed entry, in order from offset 0, then the directory and its end record, up to the
    file's end."""
    size = fh.seek(0, os.SEEK_END)
    at = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset != at:
            return (
                f"bytes {at}-{info.header_offset - 1} before {info.filename!r} belong to no "
                "entry the directory lists (data prepended or slipped in)"
                if info.header_offset > at
                else f"{info.filename!r} overlaps the entry before it"
            )
        fh.seek(at)
        head = fh.read(LOCAL_HEADER.size)
        if len(head) < LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
            return f"no local header for {info.filename!r} at offset {at}"
        _, name_len, extra_len = LOCAL_HEADER.unpack(head)
        fh.seek(at + LOCAL_HEADER.size + name_len)
        extra = fh.read(extra_len)
        at += LOCAL_HEADER.size + name_len + extra_len + info.compress_size
        if info.flag_bits & DATA_DESCRIPTOR_FLAG:
            fh.seek(at)
            signed = fh.read(4) == b"PK\x07\x08"
            at += (4 if signed else 0) + (20 if _has_zip64_extra(extra) else 12)
    if at != start_dir:
        return f"bytes {at}-{start_dir - 1} after the last entry belong to no entry"
    fh.seek(at)
    for _ in infos:
        head = fh.read(CENTRAL_HEADER.size)
        if len(head) < CENTRAL_HEADER.size or head[:4] != b"PK\x01\x02":
            return f"the central directory is not where it is said to be (offset {at})"
        _, name_len, extra_len, comment_len = CENTRAL_HEADER.unpack(head)
        at += CENTRAL_HEADER.size + name_len + extra_len + comment_len
        fh.seek(at)
    record = fh.read(4)
    if record == b"PK\x06\x06":  # the zip64 end record (its size follows), then its locator
        (rest,) = struct.unpack("<Q", fh.read(8))
        at += 12 + rest + ZIP64_LOCATOR_SIZE
        fh.seek(at)
        record = fh.read(4)
    end = record + fh.read(END_RECORD.size - 4)
    if len(end) < END_RECORD.size or end[:4] != b"PK\x05\x06":
        return f"bytes after the central directory (offset {at}) are not its end record"
    (comment_len,) = END_RECORD.unpack(end)[1:]
    if at + END_RECORD.size + comment_len != size:
        return f"{size - at - END_RECORD.size - comment_len} bytes follow the end record"
    return None


class Export:
    """The files of an export, from a .zip or an extracted folder, by their posix names."""

    def __init__(self, location: Path) -> None:
        self.location = location
        self._zip: zipfile.ZipFile | None = None
        self._files: dict[str, Path] = {}
        if location.is_dir():
            for root, dirs, files in os.walk(location):
                dirs.sort()
                for name in files:
                    path = Path(root, name)
                    self._files[path.relative_to(location).as_posix()] = path
        elif zipfile.is_zipfile(location):
            self._zip = zipfile.ZipFile(location)
            with location.open("rb") as fh:
                layout = zip_layout_problem(fh, self._zip.infolist(), self._zip.start_dir)
            if layout is not None:
                self._zip.close()
                raise Unreadable(f"the zip's layout is not what its directory says: {layout}")
            names = [i.filename for i in self._zip.infolist() if not i.is_dir()]
            if len(set(names)) != len(names):
                twice = sorted({n for n in names if names.count(n) > 1})
                raise Unreadable(f"the zip holds these names twice: {', '.join(twice)}")
            for name in names:
                posix = PurePosixPath(name)
                if posix.is_absolute() or ".." in posix.parts or "\\" in name:
                    raise Unreadable(f"unsafe name in the zip: {name!r}")
            self._files = {name: Path(name) for name in names}
        else:
            raise Unreadable(f"{location} is neither a folder nor a zip archive")

    def names(self) -> set[str]:
        return set(self._files)

    def has(self, name: str) -> bool:
        return name in self._files

    def open(self, name: str) -> Any:
        """A binary file object of ``name``, to read in blocks."""
        return self._open(name)

    def _open(self, name: str) -> Any:
        if self._zip is not None:
            return self._zip.open(name)
        return self._files[name].open("rb")

    def read(self, name: str) -> bytes:
        with self._open(name) as fh:
            data: bytes = fh.read()
            return data

    def digest(self, name: str) -> tuple[str, int]:
        """SHA-256 (hex) and size of a file, read in blocks (clips may be large)."""
        sha, size = hashlib.sha256(), 0
        with self._open(name) as fh:
            while block := fh.read(BLOCK):
                sha.update(block)
                size += len(block)
        return sha.hexdigest(), size

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def canonical_json(value: Any) -> bytes:
    """The bytes a device signs: sorted keys, no spaces, UTF-8 (common/signing.py)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (``-----BEGIN PUBLIC KEY-----``) or from the raw 32 bytes
    in base64 (how a camera's key is registered); ValueError otherwise."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(text)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("neither PEM nor base64") from exc
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """``SHA256:`` and the hex SHA-256 of the raw 32-byte key, in groups of four: what a bureau
    publishes and an auditor compares by eye."""
    digest = hashlib.sha256(raw_public_key(key)).hexdigest()
    return "SHA256:" + ":".join(digest[i : i + 4] for i in range(0, 64, 4))


def signed_manifest_bytes(payload: bytes) -> tuple[bytes, bytes, dict[str, Any]]:
    """What a camera signed in its manifest ``payload``, its signature and the manifest."""
    body = json.loads(payload)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    signature = body.pop("signature", None)
    if not isinstance(signature, str):
        raise ValueError("no signature")
    return canonical_json(body), base64.b64decode(signature, validate=True), body


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def bad(self, path: str, code: str, **params: Any) -> None:
        self.problems.append(Problem(path, code, params))


def _json(export: Export, name: str, report: Report) -> Any:
    try:
        return json.loads(export.read(name))
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        report.bad(name, "unreadable", detail=str(exc))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        report.bad(name, "malformed", detail=f"not JSON ({exc})")
    return None


def check_signature(
    export: Export, pinned: Ed25519PublicKey | None, report: Report, lang: str
) -> bytes | None:
    """Step 1: MANIFEST.json's bytes if the server's signature holds (else problems, None)."""
    try:
        included = load_public_key(export.read(SERVER_KEY))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        report.bad(SERVER_KEY, "unreadable", detail=str(exc))
        if pinned is None:
            return None
        included = pinned
    key = pinned or included
    report.lines.append(note("fingerprint", lang, fingerprint=fingerprint(key)))
    report.lines.append(note("pinned" if pinned else "unpinned", lang))
    if pinned is not None and raw_public_key(pinned) != raw_public_key(included):
        report.bad(SERVER_KEY, "not_pinned", got=fingerprint(included), want=fingerprint(pinned))
    try:
        document = export.read(MANIFEST)
        signature = base64.b64decode(export.read(SIGNATURE).strip(), validate=True)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        report.bad(MANIFEST, "unreadable", detail=str(exc))
        return None
    except (binascii.Error, ValueError):
        report.bad(SIGNATURE, "malformed", detail="not base64")
        return None
    try:
        key.verify(signature, document)
    except InvalidSignature:
        report.bad(MANIFEST, "bad_signature", fingerprint=fingerprint(key))
        return None
    return document


def check_files(export: Export, manifest: dict[str, Any], report: Report) -> dict[str, str]:
    """Step 2: every listed file is there with its size and SHA-256, and nothing else is.
    Returns the SHA-256 of each file that matched."""
    listed = {f["path"]: f for f in manifest["files"]}
    present = export.names() - {MANIFEST, SIGNATURE}
    for name in sorted(present - set(listed)):
        report.bad(name, "extra")
    digests: dict[str, str] = {}
    for name in sorted(listed):
        if name not in present:
            report.bad(name, "missing")
            continue
        try:
            sha, size = export.digest(name)
        except (OSError, zipfile.BadZipFile) as exc:
            report.bad(name, "unreadable", detail=str(exc))
            continue
        want = listed[name]
        if size != want["size"]:
            report.bad(name, "size", got=size, want=want["size"])
        elif sha != want["sha256"]:
            report.bad(name, "sha256", got=sha, want=want["sha256"])
        else:
            digests[name] = sha
    return digests


def check_device_signatures(export: Export, report: Report) -> dict[str, dict[str, Any]]:
    """Step 3: each camera manifest verifies with its camera's key. Returns the manifests
    that did, by path."""
    good: dict[str, dict[str, Any]] = {}
    for name in sorted(n for n in export.names() if n.startswith("manifests/")):
        parts = PurePosixPath(name).parts
        if len(parts) != 3 or not parts[2].endswith(".json"):
            report.bad(name, "malformed", detail="expected manifests/<device>/<upload>.json")
            continue
        device, upload = parts[1], parts[2][: -len(".json")]
        key_name = f"{DEVICE_KEYS}{device}.pub"
        try:
            signed, signature, body = signed_manifest_bytes(export.read(name))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            report.bad(name, "malformed", detail=str(exc))
            continue
        if not export.has(key_name):
            report.bad(name, "no_device_key", device=device, key=key_name)
            continue
        try:
            load_public_key(export.read(key_name)).verify(signature, signed)
        except ValueError as exc:
            report.bad(key_name, "malformed", detail=str(exc))
            continue
        except InvalidSignature:
            report.bad(name, "device_signature", device=device)
            continue
        if (body.get("device_id"), body.get("upload_id")) != (device, upload):
            report.bad(
                name, "manifest_name", device=body.get("device_id"), upload=body.get("upload_id")
            )
            continue
        good[name] = body
    return good


class ChainFormatError(ValueError):
    """``audit/chain.json`` is not ``{"head": …, "columns": …, "rows": [[seq, prev, hash], …]}``."""


class _ChainReader:
    """``audit/chain.json`` read a block at a time: the chain runs from the first exported
    entry to the head, which on a busy server may be millions of rows, so it is never held
    whole (neither the file nor its rows). ``rows()`` yields each row as it is read; the other
    members (``head``, ``columns``) are kept in ``header``."""

    READ = 64 * 1024

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf, self.pos, self.eof = "", 0, False
        self.header: dict[str, Any] = {}
        self.decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        if self.eof:
            return False
        block = self.stream.read(self.READ)
        if not block:
            self.eof = True
            return False
        if self.pos > len(self.buf) // 2:
            self.buf, self.pos = self.buf[self.pos :], 0
        self.buf += block
        return True

    def _char(self) -> str:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                raise ChainFormatError("the file ends early")

    def _expect(self, chars: str) -> str:
        char = self._char()
        if char not in chars:
            raise ChainFormatError(f"{char!r} at character {self.pos}, expected {chars!r}")
        self.pos += 1
        return char

    def _value(self) -> Any:
        self._char()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self._fill():
                    continue
                raise ChainFormatError(str(exc)) from exc
            # A value that ends where the buffer does may go on (a number): read on first.
            if end == len(self.buf) and self._fill():
                continue
            self.pos = end
            return value

    def rows(self) -> Any:
        self._expect("{")
        if self._char() == "}":
            self.pos += 1
            return
        while True:
            name = self._value()
            if not isinstance(name, str):
                raise ChainFormatError("a member name that is not a string")
            self._expect(":")
            if name == "rows":
                self._expect("[")
                if self._char() == "]":
                    self.pos += 1
                else:
                    while True:
                        yield self._value()
                        if self._expect(",]") == "]":
                            break
            else:
                self.header[name] = self._value()
            if self._expect(",}") == "}":
                break
        if self._char_or_end() is not None:
            raise ChainFormatError("data after the end of the JSON object")

    def _char_or_end(self) -> str | None:
        try:
            return self._char()
        except ChainFormatError:
            return None


@dataclass
class ChainSummary:
    """What the walk of ``audit/chain.json`` found: its first and last row and how many."""

    count: int = 0
    first: list[Any] | None = None
    last: list[Any] | None = None


def check_audit(
    export: Export,
    manifest: dict[str, Any],
    checkpoints: list[tuple[int, str]],
    report: Report,
    lang: str,
) -> tuple[dict[int, dict[str, Any]], ChainSummary]:
    """Step 5: entries are rows of the chain, the chain is continuous up to the signed head,
    and it agrees with the auditor's checkpoints. Returns the entries by seq and what the
    chain held. The chain is walked once, a block at a time, keeping only the rows an entry or
    a checkpoint needs."""
    head = manifest["audit_head"]
    entry_files: dict[int, str] = {}
    for name in sorted(n for n in export.names() if n.startswith("audit/") and n != CHAIN):
        parts = PurePosixPath(name).parts
        stem = parts[-1][: -len(".json")] if parts[-1].endswith(".json") else ""
        if len(parts) == 2 and stem.isdigit():
            entry_files[int(stem)] = name
    wanted = set(entry_files) | {seq for seq, _ in checkpoints}
    by_seq: dict[int, list[Any]] = {}
    summary = ChainSummary()
    reader: _ChainReader | None = None
    try:
        with export.open(CHAIN) as raw:
            reader = _ChainReader(io.TextIOWrapper(raw, encoding="utf-8"))
            prev: list[Any] | None = None
            for row in reader.rows():
                if not (
                    isinstance(row, list)
                    and len(row) == 3
                    and isinstance(row[0], int)
                    and not isinstance(row[0], bool)
                ):
                    detail = f"row {summary.count} is not [seq, prev_hash, hash]"
                    report.bad(CHAIN, "malformed", detail=detail)
                    return {}, ChainSummary()
                if prev is not None and row[0] != prev[0] + 1:
                    report.bad(CHAIN, "chain_gap", a=prev[0], b=row[0])
                elif prev is not None and row[1] != prev[2]:
                    report.bad(CHAIN, "chain_link", seq=row[0], prev=prev[0])
                if row[0] in wanted:
                    by_seq[row[0]] = row
                summary.first = summary.first or row
                summary.count += 1
                prev = summary.last = row
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        report.bad(CHAIN, "unreadable", detail=str(exc))
        return {}, ChainSummary()
    except (UnicodeDecodeError, ChainFormatError, RecursionError) as exc:
        report.bad(CHAIN, "malformed", detail=f"not JSON {{head, rows}} ({exc})")
        return {}, ChainSummary()
    header = reader.header if reader is not None else {}
    if header.get("head") != head:
        report.bad(
            CHAIN,
            "chain_head",
            seq=header.get("head"),
            hash="",
            head_seq=head["seq"],
            head_hash=head["hash"],
        )
    last = summary.last
    if last is not None and (last[0], last[2]) != (head["seq"], head["hash"]):
        report.bad(
            CHAIN,
            "chain_head",
            seq=last[0],
            hash=last[2],
            head_seq=head["seq"],
            head_hash=head["hash"],
        )
    if last is None and (head["seq"], head["hash"]) != (0, GENESIS):
        report.bad(
            CHAIN, "chain_head", seq=0, hash=GENESIS, head_seq=head["seq"], head_hash=head["hash"]
        )
    for seq, want in checkpoints:
        marked = by_seq.get(seq)
        if marked is None:
            first, final = (summary.first[0], last[0]) if summary.first and last else (0, 0)
            report.lines.append(note("checkpoint_outside", lang, seq=seq, first=first, last=final))
        elif marked[2] != want:
            report.bad(CHAIN, "checkpoint", seq=seq, got=marked[2], want=want)
        else:
            report.lines.append(note("checkpoint_ok", lang, seq=seq))
    entries: dict[int, dict[str, Any]] = {}
    for name in sorted(n for n in export.names() if n.startswith("audit/") and n != CHAIN):
        parts = PurePosixPath(name).parts
        stem = parts[-1][: -len(".json")] if parts[-1].endswith(".json") else ""
        entry = _json(export, name, report)
        if not isinstance(entry, dict) or len(parts) != 2 or not stem.isdigit():
            if entry is not None:
                report.bad(name, "malformed", detail="expected audit/<seq>.json holding one row")
            continue
        if entry.get("seq") != int(stem):
            report.bad(name, "entry_name", name=stem, seq=entry.get("seq"))
            continue
        listed = by_seq.get(entry["seq"])
        if listed is None:
            report.bad(name, "entry_not_in_chain", seq=entry["seq"])
            continue
        if entry.get("hash") != listed[2]:
            report.bad(name, "entry_hash", field="hash", seq=listed[0])
        elif entry.get("prev_hash") != listed[1]:
            report.bad(name, "entry_hash", field="prev_hash", seq=listed[0])
        else:
            entries[entry["seq"]] = entry
    return entries, summary


def _details(entry: dict[str, Any]) -> dict[str, Any]:
    try:
        details = json.loads(entry.get("details") or "{}")
    except (TypeError, json.JSONDecodeError):
        return {}
    return details if isinstance(details, dict) else {}


def check_evidence(
    export: Export,
    manifest: dict[str, Any],
    digests: dict[str, str],
    manifests: dict[str, dict[str, Any]],
    entries: dict[int, dict[str, Any]],
    report: Report,
) -> dict[str, dict[str, Any]]:
    """Step 4: clips match their signed manifests, photos their audit entries, and the session
    evidence names only files the archive holds, with their hashes. Returns the session
    evidence read, by session id."""
    stored = {
        e["subject_id"]: (seq, _details(e))
        for seq, e in entries.items()
        if e.get("action") == "clip_stored" and e.get("subject_type") == "clip"
    }
    received = {
        e["subject_id"]: (seq, _details(e))
        for seq, e in entries.items()
        if e.get("action") == "photo_received" and e.get("subject_type") == "photo"
    }
    clip_sha: dict[str, str] = {}
    for clip in manifest["clips"]:
        name, clip_id = clip["file"], str(clip["id"])
        got = digests.get(name)
        if got is None:
            continue  # already named by the file check
        clip_sha[clip_id] = got
        signed = manifests.get(clip["manifest"])
        if signed is None:
            if not export.has(clip["manifest"]):
                report.bad(name, "no_manifest", clip=clip_id, manifest=clip["manifest"])
            continue  # a manifest that is there but does not verify is named already
        if signed.get("sha256") != got:
            report.bad(
                name,
                "clip_manifest_sha",
                got=got,
                manifest=clip["manifest"],
                want=signed.get("sha256"),
            )
        if clip_id in stored and stored[clip_id][1].get("sha256") != got:
            seq, details = stored[clip_id]
            report.bad(
                name,
                "clip_audit_sha",
                got=got,
                entry=f"audit/{seq}.json",
                want=details.get("sha256"),
            )
    photo_sha: dict[str, str] = {}
    for photo in manifest["photos"]:
        name, photo_id = photo["file"], str(photo["id"])
        got = digests.get(name)
        if got is None:
            continue
        photo_sha[photo_id] = got
        if photo_id not in received:
            report.bad(name, "photo_no_audit", photo=photo_id)
        elif received[photo_id][1].get("sha256") != got:
            seq, details = received[photo_id]
            report.bad(
                name,
                "photo_audit_sha",
                got=got,
                entry=f"audit/{seq}.json",
                want=details.get("sha256"),
            )
    evidences: dict[str, dict[str, Any]] = {}
    for session_id in manifest["sessions"]:
        name = f"sessions/{session_id}.json"
        if not export.has(name):
            report.bad(name, "no_session", session=session_id)
            continue
        if name not in digests:
            continue
        evidence = _json(export, name, report)
        if not isinstance(evidence, dict):
            continue
        evidences[session_id] = evidence
        shown = [
            ("clip", w["clip"], clip_sha)
            for w in evidence.get("windows") or []
            if isinstance(w, dict) and isinstance(w.get("clip"), dict)
        ] + [("photo", p, photo_sha) for p in evidence.get("photos") or [] if isinstance(p, dict)]
        for what, item, known in shown:
            item_id = str(item.get("id"))
            if item_id not in known:
                report.bad(name, "evidence_file", what=what, id=item_id)
            elif item.get("sha256") != known[item_id]:
                report.bad(
                    name,
                    "evidence_sha",
                    what=what,
                    id=item_id,
                    want=item.get("sha256"),
                    got=known[item_id],
                )
    return evidences


def check_windows(evidences: dict[str, dict[str, Any]], report: Report) -> None:
    """Step 4 (continued): each session's windows are its windows once each, in order (index
    0, 1, ... with number index + 1: the export is of a session that is over, so every window
    is shown), and no two answer one command or show one clip. Each window's clip is later
    tied to its own window's command; without this a re-signed archive could show one
    window's clip as every window's."""
    for session_id, evidence in evidences.items():
        name = f"sessions/{session_id}.json"
        windows = [w for w in evidence.get("windows") or [] if isinstance(w, dict)]
        if len(windows) != len(evidence.get("windows") or []):
            report.bad(name, "malformed", detail="a window that is not a JSON object")
        for position, window in enumerate(windows):
            index, number = window.get("index"), window.get("number")
            if type(index) is not int or index != position or number != position + 1:
                report.bad(
                    name,
                    "window_order",
                    position=position + 1,
                    index=index,
                    number=number,
                    want=position,
                    want_number=position + 1,
                )
        for what, value_of in (
            ("cmd_id", lambda w: w.get("cmd_id")),
            ("clip", lambda w: w["clip"].get("id") if isinstance(w.get("clip"), dict) else None),
        ):
            first_with: dict[str, Any] = {}
            for position, window in enumerate(windows):
                value = value_of(window)
                if value is None:
                    continue  # a window never asked for, or without a clip
                key = json.dumps(value, sort_keys=True)
                if key in first_with:
                    report.bad(
                        name,
                        f"window_repeat_{what}",
                        number=window.get("number", position + 1),
                        first=first_with[key],
                        value=value,
                    )
                else:
                    first_with[key] = window.get("number", position + 1)


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _asked(signed: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The span a camera's signed manifest says it was asked to cut, in server time: the
    requested window, or (a clip not cut for a request) its cut bounds through its clock
    offset."""
    start, end = _instant(signed.get("requested_start")), _instant(signed.get("requested_end"))
    if start is not None and end is not None:
        return start, end
    offset = signed.get("clock_offset_s") or 0.0
    cut_start, cut_end = _instant(signed.get("cut_start")), _instant(signed.get("cut_end"))
    if cut_start is None or cut_end is None or not isinstance(offset, (int, float)):
        return None, None
    return cut_start - timedelta(seconds=offset), cut_end - timedelta(seconds=offset)


def check_clip_claims(
    manifest: dict[str, Any],
    manifests: dict[str, dict[str, Any]],
    evidences: dict[str, dict[str, Any]],
    report: Report,
) -> None:
    """Step 4 (continued): each clip is the exported sessions' by what its camera signed, not
    by what the server's index says. The index entry's session, command, device and upload
    are the device-signed manifest's; the clip is for an exported session, or answers the
    command of one of its windows; and a clip a window shows was signed for that session and
    that window's command, asked for a span covering the window."""
    windows: dict[str, tuple[str, dict[str, Any]]] = {}
    for session_id, evidence in evidences.items():
        for window in evidence.get("windows") or []:
            if isinstance(window, dict) and isinstance(window.get("cmd_id"), str):
                windows[window["cmd_id"]] = (session_id, window)
    signed_by_id: dict[str, dict[str, Any]] = {}
    for clip in manifest["clips"]:
        clip_id, name = str(clip["id"]), clip["file"]
        signed = manifests.get(clip["manifest"])
        if signed is None:
            continue  # no verified manifest: named already
        signed_by_id[clip_id] = signed
        for key in ("session_id", "cmd_id", "device_id", "upload_id"):
            if clip.get(key) != signed.get(key):
                report.bad(
                    name,
                    "clip_claim",
                    field=key,
                    want=clip.get(key),
                    manifest=clip["manifest"],
                    got=signed.get(key),
                )
        if signed.get("session_id") not in manifest["sessions"] and (
            signed.get("cmd_id") not in windows
        ):
            report.bad(
                name,
                "clip_foreign",
                clip=clip_id,
                session=signed.get("session_id"),
                cmd=signed.get("cmd_id"),
            )
    for session_id, evidence in evidences.items():
        name = f"sessions/{session_id}.json"
        for window in evidence.get("windows") or []:
            if not isinstance(window, dict) or not isinstance(window.get("clip"), dict):
                continue
            clip_id = str(window["clip"].get("id"))
            signed = signed_by_id.get(clip_id)
            if signed is None:
                continue  # a clip the archive does not hold, or unsigned: named already
            number = window.get("number")
            if (signed.get("session_id"), signed.get("cmd_id")) != (
                session_id,
                window.get("cmd_id"),
            ):
                report.bad(
                    name,
                    "window_clip",
                    number=number,
                    session=session_id,
                    want=window.get("cmd_id"),
                    clip=clip_id,
                    got_session=signed.get("session_id"),
                    got=signed.get("cmd_id"),
                )
                continue
            start, end = _instant(window.get("start")), _instant(window.get("end"))
            asked_start, asked_end = _asked(signed)
            if (
                start is None
                or end is None
                or asked_start is None
                or asked_end is None
                or not asked_start <= start < end <= asked_end
            ):
                report.bad(
                    name,
                    "window_cover",
                    number=number,
                    start=window.get("start"),
                    end=window.get("end"),
                    clip=clip_id,
                    got_start=asked_start and asked_start.isoformat(),
                    got_end=asked_end and asked_end.isoformat(),
                )


def verify(
    location: Path,
    pinned: Ed25519PublicKey | None = None,
    checkpoints: list[tuple[int, str]] | None = None,
    lang: str = "zh-CN",
) -> Report:
    """Check the export at ``location`` (a .zip or a folder); ``Unreadable`` if it is neither."""
    report = Report()
    export = Export(location)
    try:
        document = check_signature(export, pinned, report, lang)
        if document is None:
            # Unsigned or wrongly signed: still name the files that differ from the list.
            try:
                manifest = json.loads(export.read(MANIFEST))
                check_files(export, manifest, report)
            except (OSError, KeyError, TypeError, ValueError, AttributeError, zipfile.BadZipFile):
                pass  # an unreadable list: the signature failure is already the verdict
            return report
        try:
            manifest = json.loads(document)
            if manifest.get("format") != FORMAT:
                raise ValueError(f"format {manifest.get('format')!r}, this script reads {FORMAT}")
            for key in ("files", "clips", "photos", "sessions", "audit_head"):
                if key not in manifest:
                    raise ValueError(f"no {key!r}")
        except (ValueError, AttributeError) as exc:
            report.bad(MANIFEST, "malformed", detail=str(exc))
            return report
        try:
            digests = check_files(export, manifest, report)
            manifests = check_device_signatures(export, report)
            entries, chain = check_audit(export, manifest, checkpoints or [], report, lang)
            evidences = check_evidence(export, manifest, digests, manifests, entries, report)
            check_windows(evidences, report)
            check_clip_claims(manifest, manifests, evidences, report)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            # Signed, yet not shaped as this script expects: say so rather than crash.
            report.bad(MANIFEST, "malformed", detail=f"{type(exc).__name__}: {exc}")
            return report
        head = manifest["audit_head"]
        report.lines.append(
            note(
                "summary",
                lang,
                sessions=len(manifest["sessions"]),
                clips=len(manifest["clips"]),
                photos=len(manifest["photos"]),
                entries=len(entries),
                rows=chain.count,
                first=chain.first[0] if chain.first else 0,
                head_seq=head["seq"],
                head_hash=head["hash"],
            )
        )
        report.lines.append(
            note("exported", lang, at=manifest.get("exported_at"), by=manifest.get("exported_by"))
        )
    finally:
        export.close()
    return report


def _checkpoint(value: str) -> tuple[int, str]:
    seq, _, digest = value.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise argparse.ArgumentTypeError("SEQ:HASH, e.g. 1234:9f86d081…(64 hex)")
    return int(seq), digest.lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="verify.py", description="核对 classcam 证据导出包 / check a classcam evidence export"
    )
    parser.add_argument("export", type=Path, help="导出包 .zip 或解压目录 / the .zip or its folder")
    parser.add_argument(
        "--server-key", type=Path, help="您信任的服务器公钥文件 / the server key you trust (pin)"
    )
    parser.add_argument(
        "--checkpoint",
        type=_checkpoint,
        action="append",
        default=[],
        metavar="SEQ:HASH",
        help="另行记录的审计链头 / an audit head written down elsewhere",
    )
    parser.add_argument("--lang", choices=["zh-CN", "en"], default="zh-CN")
    args = parser.parse_args(argv)
    try:
        pinned = load_public_key(args.server_key.read_bytes()) if args.server_key else None
        report = verify(args.export, pinned, args.checkpoint, args.lang)
    except (OSError, ValueError, Unreadable, zipfile.BadZipFile) as exc:
        print(f"{args.export}: {exc}", file=sys.stderr)
        return 2
    for line in report.lines:
        print(line)
    for problem in report.problems:
        print(f"FAIL {problem.text(args.lang)}")
    if report.problems:
        print(note("failed", args.lang, count=len(report.problems)))
        return 1
    print(note("ok", args.lang))
    return 0


if __name__ == "__main__":
    sys.exit(main())
