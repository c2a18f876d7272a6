"""Turning a requested window into a signed, durable outbox entry (DESIGN.md §1 step 4)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.chunks import digest_file
from common.clock import Clock
from common.schemas import ClipKind, Manifest
from common.signing import sign_manifest
from edge_agent.cutter import CutResult, cut_window
from edge_agent.outbox import Outbox, OutboxItem
from edge_agent.spool import Spool, durable_replace, temp_path


@dataclass(frozen=True, slots=True)
class ClipRequest:
    """A window to cut, as the server asked for it (server UTC) and as the device maps it."""

    start: datetime
    end: datetime
    session_id: str | None = None
    cmd_id: str | None = None
    # Device clock minus server clock as estimated now: maps footage indexed without an
    # estimate of its own (segments carry the offset of when they were recorded).
    clock_offset_s: float = 0.0


def build_manifest(
    request: ClipRequest,
    cut: CutResult,
    *,
    upload_id: str,
    device_id: str,
    chunk_size: int,
    created_at: datetime,
) -> Manifest:
    """The manifest of a finished cut: what was asked (server UTC), what was cut (device
    time, with the offset that maps it to server time), and every hash."""
    digest = digest_file(cut.path, chunk_size)
    return Manifest(
        upload_id=upload_id,
        device_id=device_id,
        session_id=request.session_id,
        cmd_id=request.cmd_id,
        requested_start=request.start,
        requested_end=request.end,
        cut_start=cut.cut_start,
        cut_end=cut.cut_end,
        clock_offset_s=cut.clock_offset_s,
        size=digest.size,
        sha256=digest.sha256,
        chunk_size=chunk_size,
        chunk_sha256=digest.chunk_sha256,
        codec=cut.codec,
        duration_s=cut.duration_s,
        frames=cut.frames,
        width=cut.width,
        height=cut.height,
        created_at=created_at,
    )


def cut_and_enqueue(
    spool: Spool,
    outbox: Outbox,
    key: Ed25519PrivateKey,
    request: ClipRequest,
    *,
    device_id: str,
    chunk_size: int,
    clock: Clock,
    upload_id: str | None = None,
) -> OutboxItem:
    """Cut ``request`` from the spool by stream copy, sign its manifest, queue it for upload."""
    upload_id = upload_id or uuid.uuid4().hex
    path = outbox.file_path(upload_id)
    cut = cut_window(spool, request.start, request.end, path, clock_offset_s=request.clock_offset_s)
    manifest = build_manifest(
        request,
        cut,
        upload_id=upload_id,
        device_id=device_id,
        chunk_size=chunk_size,
        created_at=clock.now(),
    )
    payload = sign_manifest(manifest, key)
    return outbox.enqueue(
        upload_id, path, payload, size=manifest.size, chunk_size=chunk_size, sha256=manifest.sha256
    )


def enqueue_snapshot(
    outbox: Outbox,
    key: Ed25519PrivateKey,
    jpeg: bytes,
    taken: datetime,
    *,
    width: int,
    height: int,
    device_id: str,
    chunk_size: int,
    clock: Clock,
    cmd_id: str | None = None,
    upload_id: str | None = None,
    kind: ClipKind = ClipKind.SNAPSHOT,
) -> OutboxItem:
    """Queue a still (a snapshot, or the installation's reference view) for upload."""
    upload_id = upload_id or uuid.uuid4().hex
    path = outbox.file_path(upload_id, ".jpg")
    durable_write(path, jpeg)
    digest = digest_file(path, chunk_size)
    manifest = Manifest(
        upload_id=upload_id,
        device_id=device_id,
        kind=kind,
        cmd_id=cmd_id,
        cut_start=taken,
        cut_end=taken,
        size=digest.size,
        sha256=digest.sha256,
        chunk_size=chunk_size,
        chunk_sha256=digest.chunk_sha256,
        content_type="image/jpeg",
        codec="jpeg",
        duration_s=0.0,
        frames=1,
        width=width,
        height=height,
        created_at=clock.now(),
    )
    return outbox.enqueue(
        upload_id,
        path,
        sign_manifest(manifest, key),
        size=digest.size,
        chunk_size=chunk_size,
        sha256=digest.sha256,
    )


def durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync, rename, fsync the directory."""
    temp = temp_path(path)
    temp.write_bytes(data)
    durable_replace(temp, path)
