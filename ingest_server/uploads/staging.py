"""Staging in the database: every verified chunk of an upload still receiving is a row of
``upload_chunks``, so any ingest worker on the shared subscription can finish any upload.

Why the database, and not each worker's disk or the object store: the broker hands each message
of a shared subscription to one member of the group, so one upload's chunks land on several
workers. Staged on each worker's own disk, the worker that got ``fin`` never held the whole file
(a 40-chunk upload took 21 ``fin`` rounds and twice the bytes). Routing an upload to one worker
needs a hop of our own in front of the broker; an object store takes parts of at least 5 MiB
and has no transaction to share with the ledger. The database is already shared by every
worker, and a chunk's bytes go in the very transaction that records its range
(``ledger.record_ranges``): what the ledger says was received is there, on every worker, once
committed; the acknowledgement to the broker follows that commit. A chunk two workers both
received (a redelivery after one was killed) is one row (``INSERT … ON CONFLICT DO NOTHING``).

At ``fin`` the worker assembles the file from the rows, in order, into a staging file of its
own (``assemble``), hashing as it writes; the store then commits that file as usual. The rows
of an upload are deleted in the transaction that records it complete or rejected, and by the
reaper when it expires.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from common.ranges import Range
from ingest_server.db import SessionFactory
from ingest_server.models import UploadChunk
from ingest_server.store import Store, staging_key

Key = tuple[str, str]  # (device id, upload id), as ``ledger.UploadKey``

ROWS_PER_FETCH = 16  # chunks held in memory at once while a file is assembled


def stage(session: Session, pending: Iterable[tuple[Key, dict[int, bytes]]]) -> int:
    """Insert the pending chunks (by offset) of each upload in ``session``'s transaction (a
    chunk staged already, by this worker or another, is left as it is); return how many were
    offered."""
    rows = [
        {"device_id": device_id, "upload_id": upload_id, "byte_offset": offset, "data": data}
        for (device_id, upload_id), chunks in pending
        for offset, data in chunks.items()
    ]
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(UploadChunk).on_conflict_do_nothing(
        index_elements=["device_id", "upload_id", "byte_offset"]
    )
    session.execute(statement, rows)
    return len(rows)


def drop(session: Session, key: Key, spans: Iterable[Range] | None = None) -> None:
    """Delete the staged chunks of an upload (only those starting in ``spans``, if given)."""
    device_id, upload_id = key
    statement = delete(UploadChunk).where(
        UploadChunk.device_id == device_id, UploadChunk.upload_id == upload_id
    )
    if spans is not None:
        starts = [start for start, _ in spans]
        if not starts:
            return
        statement = statement.where(UploadChunk.byte_offset.in_(starts))
    session.execute(statement.execution_options(synchronize_session=False))


def assembly_name(key: Key) -> str:
    """A staging file name for assembling the upload ``key`` that no other worker uses
    (workers on one machine may share the store's staging directory)."""
    return f"{staging_key(*key)[:40]}-{uuid.uuid4().hex[:16]}"


def assemble(
    session_factory: SessionFactory, store: Store, key: Key, size: int, name: str
) -> tuple[str, int]:
    """Write the staged chunks of the upload ``key`` (``size`` bytes), in order, to the
    store's staging file ``name``; return the SHA-256 of what was written and how many chunks
    were (the caller compares the hash with the manifest's: a chunk that is not there leaves a
    hole of zeros, which that comparison catches)."""
    device_id, upload_id = key
    store.discard(name)
    store.prepare(name, size)
    digest = hashlib.sha256()
    position = 0
    found = 0
    with session_factory() as session:
        chunks = session.execute(
            select(UploadChunk.byte_offset, UploadChunk.data)
            .where(
                UploadChunk.device_id == device_id,
                UploadChunk.upload_id == upload_id,
            )
            .order_by(UploadChunk.byte_offset)
            .execution_options(yield_per=ROWS_PER_FETCH)
        )
        for offset, data in chunks:
            if offset < position or offset + len(data) > size:
                continue  # not a chunk of this manifest's layout: the hash check says so
            if offset > position:
                digest.update(bytes(offset - position))  # a hole reads back as zeros
            store.write_chunk(name, offset, data)
            digest.update(data)
            position = offset + len(data)
            found += 1
    if position < size:
        digest.update(bytes(size - position))
    return digest.hexdigest(), found
