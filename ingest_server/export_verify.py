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
   entry's); each photo's is the one its ``photo_received`` audit entry states.
5. Each audit entry (``audit/<seq>.json``) is the row of that seq in ``audit/chain.json``
   (same ``hash`` and ``prev_hash``), and the chain's links run unbroken from its first row to
   the head the server signed. ``--checkpoint SEQ:HASH`` (repeatable) compares the chain with
   a head written down elsewhere earlier (``classcam-server audit verify`` prints it).

Exit status: 0 when everything holds, 1 naming each file that does not, 2 when the export
cannot be read at all. Output in Simplified Chinese unless ``--lang en``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

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


def check_audit(
    export: Export,
    manifest: dict[str, Any],
    checkpoints: list[tuple[int, str]],
    report: Report,
    lang: str,
) -> tuple[dict[int, dict[str, Any]], list[list[Any]]]:
    """Step 5: entries are rows of the chain, the chain is continuous up to the signed head,
    and it agrees with the auditor's checkpoints. Returns the entries by seq and the rows."""
    chain = _json(export, CHAIN, report)
    rows: list[list[Any]] = []
    head = manifest["audit_head"]
    if isinstance(chain, dict) and isinstance(chain.get("rows"), list):
        rows = chain["rows"]
        if chain.get("head") != head:
            report.bad(
                CHAIN,
                "chain_head",
                seq=chain.get("head"),
                hash="",
                head_seq=head["seq"],
                head_hash=head["hash"],
            )
    elif chain is not None:
        report.bad(CHAIN, "malformed", detail="expected {head, rows}")
    by_seq: dict[int, list[Any]] = {}
    for index, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], int)):
            report.bad(CHAIN, "malformed", detail=f"row {index} is not [seq, prev_hash, hash]")
            return {}, []
        if index and row[0] != rows[index - 1][0] + 1:
            report.bad(CHAIN, "chain_gap", a=rows[index - 1][0], b=row[0])
        elif index and row[1] != rows[index - 1][2]:
            report.bad(CHAIN, "chain_link", seq=row[0], prev=rows[index - 1][0])
        by_seq[row[0]] = row
    if rows and (rows[-1][0], rows[-1][2]) != (head["seq"], head["hash"]):
        report.bad(
            CHAIN,
            "chain_head",
            seq=rows[-1][0],
            hash=rows[-1][2],
            head_seq=head["seq"],
            head_hash=head["hash"],
        )
    if not rows and (head["seq"], head["hash"]) != (0, GENESIS):
        report.bad(
            CHAIN, "chain_head", seq=0, hash=GENESIS, head_seq=head["seq"], head_hash=head["hash"]
        )
    for seq, want in checkpoints:
        marked = by_seq.get(seq)
        if marked is None:
            first, last = (rows[0][0], rows[-1][0]) if rows else (0, 0)
            report.lines.append(note("checkpoint_outside", lang, seq=seq, first=first, last=last))
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
    return entries, rows


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
) -> None:
    """Step 4: clips match their signed manifests, photos their audit entries, and the session
    evidence names only files the archive holds, with their hashes."""
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
            entries, rows = check_audit(export, manifest, checkpoints or [], report, lang)
            check_evidence(export, manifest, digests, manifests, entries, report)
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
                rows=len(rows),
                first=rows[0][0] if rows else 0,
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
