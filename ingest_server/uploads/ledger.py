"""The byte-range ledger: which verified bytes of an upload are durable, in memory and in the
database.

A chunk is checked against its signed manifest (``check_chunk``, pure) before it is kept;
kept ranges stay ``pending`` until the group commit has made their bytes durable (the staging
file fsync'ed, or their rows inserted by ``staging.stage`` in the same transaction) and records
them in ``uploads.received_ranges`` (``record_ranges``), so ``received`` only ever lists
durable bytes. ``UploadCache`` keeps
open uploads and recently finished ones in bounded memory.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.ranges import Range, chunk_length, merge, subtract
from common.schemas import Manifest, RejectReason
from ingest_server.db import SessionFactory
from ingest_server.errors import ChunkRefused, UploadRejected
from ingest_server.models import Upload, UploadState
from ingest_server.store import staging_key
from ingest_server.uploads import staging

MAX_CACHED_UPLOADS = 4096
MAX_FINISHED_REMEMBERED = 4096

UploadKey = tuple[str, str]  # (device id, upload id): an upload id is its device's own name


@dataclass
class OpenUpload:
    """What the processor keeps in memory about an upload still receiving."""

    upload_id: str
    device_id: str
    manifest: Manifest
    received: list[Range]  # durable: staged and recorded in the database
    pending: list[Range] = field(default_factory=list)  # verified, not yet committed
    # ``database`` staging: the verified bytes of ``pending`` by offset, staged as rows by the
    # next commit (``staging.stage``); ``local`` staging writes them to the file at once.
    pending_data: dict[int, bytes] = field(default_factory=dict)
    new_chunks: int = 0
    duplicate_chunks: int = 0

    @property
    def key(self) -> UploadKey:
        return (self.device_id, self.upload_id)

    @property
    def staging_file(self) -> str:
        """Its staging file's name in the store (``local`` staging)."""
        return staging_key(self.device_id, self.upload_id)

    @property
    def dirty(self) -> bool:
        """Something to record at the next commit."""
        return bool(self.pending or self.duplicate_chunks)


@dataclass(frozen=True, slots=True)
class FinalUpload:
    """An upload that reached a final state (or expired): all a late chunk or a repeated fin
    needs (the manifest, with a hash per chunk, is not kept)."""

    upload_id: str
    device_id: str
    state: UploadState
    reject_reason: str | None = None

    @property
    def key(self) -> UploadKey:
        return (self.device_id, self.upload_id)


def check_chunk(manifest: Manifest, upload_id: str, offset: int, data: bytes) -> Range:
    """The span a chunk fills, once it is one the signed manifest describes byte for byte;
    ``ChunkRefused`` with the reason otherwise."""
    size, chunk_size = manifest.size, manifest.chunk_size
    if offset % chunk_size or offset >= size:
        raise ChunkRefused(
            RejectReason.BAD_OFFSET,
            upload_id,
            f"offset {offset} is not a chunk of {size} bytes in {chunk_size}s",
        )
    if len(data) > chunk_size:
        raise ChunkRefused(
            RejectReason.OVERSIZE_CHUNK,
            upload_id,
            f"chunk at {offset} has {len(data)} bytes, chunk_size {chunk_size}",
        )
    index = offset // chunk_size
    expected = chunk_length(index, size, chunk_size)
    if len(data) != expected:
        raise ChunkRefused(
            RejectReason.SIZE_MISMATCH,
            upload_id,
            f"chunk at {offset} has {len(data)} bytes, expected {expected}",
        )
    if hashlib.sha256(data).hexdigest() != manifest.chunk_sha256[index]:
        raise ChunkRefused(
            RejectReason.CHUNK_HASH_MISMATCH,
            upload_id,
            f"chunk at {offset} does not match its manifest hash",
        )
    return (offset, offset + len(data))


def bad_chunk_spans(manifest: Manifest, chunk_digests: list[str]) -> list[Range]:
    """The spans of the chunks whose staged bytes do not hash as the manifest says."""
    bad = [
        i
        for i, expected in enumerate(manifest.chunk_sha256)
        if i >= len(chunk_digests) or chunk_digests[i] != expected
    ]
    return [
        (
            i * manifest.chunk_size,
            i * manifest.chunk_size + chunk_length(i, manifest.size, manifest.chunk_size),
        )
        for i in bad
    ]


class UploadCache:
    """Open uploads and recently finished ones, bounded: late chunks need no database lookup."""

    def __init__(self) -> None:
        self.open: dict[UploadKey, OpenUpload] = {}
        self.finished: OrderedDict[UploadKey, FinalUpload] = OrderedDict()

    def remember(self, upload: OpenUpload) -> None:
        self.open[upload.key] = upload
        if len(self.open) > MAX_CACHED_UPLOADS:
            for key, old in list(self.open.items()):
                if not old.dirty:
                    del self.open[key]
                    break

    def finish(self, final: FinalUpload) -> None:
        self.open.pop(final.key, None)
        self.finished[final.key] = final
        self.finished.move_to_end(final.key)
        while len(self.finished) > MAX_FINISHED_REMEMBERED:
            self.finished.popitem(last=False)

    def forget(self, key: UploadKey) -> None:
        self.open.pop(key, None)
        self.finished.pop(key, None)

    def dirty(self) -> list[OpenUpload]:
        return [u for u in self.open.values() if u.dirty]


def open_uploads(session_factory: SessionFactory, device_id: str) -> tuple[int, int]:
    """How many uploads ``device_id`` holds open (receiving), and their bytes in all."""
    with session_factory() as session:
        count, size = session.execute(
            select(func.count(), func.coalesce(func.sum(Upload.size), 0)).where(
                Upload.device_id == device_id, Upload.state == UploadState.RECEIVING.value
            )
        ).one()
    return int(count or 0), int(size or 0)


def check_open_uploads(
    session_factory: SessionFactory,
    device_id: str,
    upload_id: str,
    limit: int,
    *,
    size: int = 0,
    byte_limit: int | None = None,
) -> None:
    """Refuse a new upload (for now) to a device that holds ``limit`` open already, or whose
    open uploads with this one of ``size`` bytes would stage more than ``byte_limit``."""
    count, staged = open_uploads(session_factory, device_id)
    if count >= limit:
        raise UploadRejected(
            RejectReason.TOO_MANY_UPLOADS,
            upload_id,
            f"device {device_id} has {count} uploads open (at most {limit})",
        )
    if byte_limit is not None and staged + size > byte_limit:
        raise UploadRejected(
            RejectReason.TOO_MANY_UPLOADS,
            upload_id,
            f"device {device_id} has {staged} bytes of uploads open; with this one's {size}"
            f" that is over {byte_limit}",
        )


def new_upload_row(manifest: Manifest, payload: bytes, now: datetime) -> Upload:
    """The row of an upload just announced: nothing received yet."""
    return Upload(
        upload_id=manifest.upload_id,
        device_id=manifest.device_id,
        manifest=payload.decode(),
        size=manifest.size,
        sha256=manifest.sha256,
        chunk_size=manifest.chunk_size,
        state=UploadState.RECEIVING.value,
        reject_reason=None,
        received_ranges="[]",
        chunks_received=0,
        chunks_duplicate=0,
        created_at=now,
        updated_at=now,
    )


def record_ranges(
    session: Session, dirty: Iterable[OpenUpload], now: datetime
) -> dict[UploadKey, list[Range]]:
    """Stage the pending chunks of ``dirty`` uploads (``staging.stage``) and add their ranges
    to the uploads' rows, in ``session``'s transaction; return each upload's ranges as
    recorded. Uploads no longer receiving are left alone (their pending chunks are dropped)."""
    merged: dict[UploadKey, list[Range]] = {}
    receiving: list[OpenUpload] = []
    # Rows locked in one order by every worker: two flushes touching the same uploads wait
    # for each other instead of deadlocking.
    for upload in sorted(dirty, key=lambda u: u.key):
        row = session.get(Upload, (upload.upload_id, upload.device_id), with_for_update=True)
        if row is None or row.state != UploadState.RECEIVING.value:
            continue
        receiving.append(upload)
        # Merge with what is in the database: another worker may have added ranges.
        ranges = merge([*row.ranges, *upload.pending])
        row.ranges = ranges
        row.chunks_received += upload.new_chunks
        row.chunks_duplicate += upload.duplicate_chunks
        row.updated_at = now
        merged[upload.key] = ranges
    staging.stage(session, ((u.key, u.pending_data) for u in receiving))
    return merged


def forget_ranges(
    session_factory: SessionFactory, upload: OpenUpload, spans: list[Range], now: datetime
) -> list[Range]:
    """Take ``spans`` out of the upload's received ranges, their staged bytes with them (they
    did not hash as the manifest says)."""
    with session_factory.begin() as session:
        row = session.get(Upload, (upload.upload_id, upload.device_id), with_for_update=True)
        if row is None:
            raise UploadRejected(RejectReason.UNKNOWN_UPLOAD, upload.upload_id, "vanished")
        if row.state != UploadState.RECEIVING.value:
            return row.ranges  # finished meanwhile (by another worker): nothing to take back
        staging.drop(session, upload.key, spans)
        ranges = row.ranges
        for span in spans:
            ranges = subtract(ranges, span)
        row.ranges = ranges
        row.updated_at = now
    return ranges


def restart_expired(session_factory: SessionFactory, key: UploadKey, now: datetime) -> None:
    """An expired upload receives again, from nothing."""
    device_id, upload_id = key
    with session_factory.begin() as session:
        row = session.get(Upload, (upload_id, device_id), with_for_update=True)
        if row is not None and row.state == UploadState.EXPIRED.value:
            staging.drop(session, key)  # the reaper dropped them; whatever is left is stale
            row.state = UploadState.RECEIVING.value
            row.ranges = []
            row.updated_at = now
