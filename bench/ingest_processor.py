"""Throughput of IngestProcessor alone (no MQTT): chunks verified, written, group-committed.

    .venv/bin/python bench/ingest_processor.py [--mb 256] [--chunk-kib 64] [--flush-every 256]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--dir /var/tmp]

Flushes every ``--flush-every`` chunks, as the consumer does under load, so the figure includes
the fsync of the staging file and the SQLite (WAL, synchronous=FULL) or PostgreSQL commit.
``fin`` (re-hash of the whole file, fsync, link, clip row) is timed separately. A PostgreSQL
run works in a schema of its own, dropped afterwards; the work directory is removed too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from common import topics
from common.schemas import Fin, Manifest
from common.signing import generate_private_key, public_key_b64, sign_manifest
from ingest_server import crud
from ingest_server.db import make_engine, make_session_factory, migrate
from ingest_server.ingest import IngestProcessor
from ingest_server.settings import Settings
from ingest_server.store import EvidenceStore


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--flush-every", type=int, default=256)
    parser.add_argument("--database-url")
    parser.add_argument("--dir", default=None, help="where the store and SQLite file go")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="classcam-bench-", dir=args.dir))
    schema = f"bench_{os.getpid()}"
    admin = make_engine(args.database_url) if args.database_url else None
    if admin is not None:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = (
            f"{args.database_url}?options=-csearch_path%3D{schema}"
            if args.database_url
            else f"sqlite:///{work / 'bench.db'}"
        )
        run(args, work, url)
    finally:
        if admin is not None:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, url: str) -> None:
    """Migrate, register a device, and time one large upload through the processor."""
    migrate(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    key = generate_private_key()
    device = f"bench-{os.getpid()}"
    with sessions.begin() as session:
        crud.register_device(session, device, public_key_b64(key))
    settings = Settings(data_dir=work, database_url=url, max_upload_size=1 << 40)
    processor = IngestProcessor(sessions, EvidenceStore(work / "evidence"), settings)

    chunk_size = args.chunk_kib * 1024
    size = args.mb * 1024 * 1024
    block = os.urandom(chunk_size)
    # Distinct chunks would cost a lot of memory to prepare; the same bytes at every offset
    # exercise exactly the same code (each chunk is still hashed and written).
    count = size // chunk_size
    whole = hashlib.sha256()
    for _ in range(count):
        whole.update(block)
    chunk_hash = hashlib.sha256(block).hexdigest()
    now = datetime.now(UTC)
    upload_id = f"u{os.getpid()}"
    manifest = Manifest(
        upload_id=upload_id,
        device_id=device,
        cut_start=now - timedelta(seconds=60),
        cut_end=now,
        size=count * chunk_size,
        sha256=whole.hexdigest(),
        chunk_size=chunk_size,
        chunk_sha256=[chunk_hash] * count,
        duration_s=60,
        frames=1500,
        width=1280,
        height=720,
        created_at=now,
    )
    processor.handle(topics.file_init(device, upload_id), sign_manifest(manifest, key))

    chunk_topics = [topics.file_chunk(device, upload_id, i * chunk_size) for i in range(count)]
    start = time.perf_counter()
    for i, topic in enumerate(chunk_topics, 1):
        processor.handle(topic, block)
        if i % args.flush_every == 0:
            processor.flush()
    processor.flush()
    chunks_s = time.perf_counter() - start

    fin = Fin(upload_id=upload_id, size=manifest.size, sha256=manifest.sha256)
    start = time.perf_counter()
    [ack] = processor.handle(topics.file_fin(device, upload_id), fin.to_bytes())
    fin_s = time.perf_counter() - start
    assert b'"complete"' in ack.payload, ack.payload

    mb = manifest.size / 1e6
    backend = engine.dialect.name
    print(
        f"{backend}, {args.chunk_kib} KiB chunks, flush every {args.flush_every}: "
        f"{mb:.0f} MB in {chunks_s:.2f} s = {mb / chunks_s:.0f} MB/s "
        f"({count / chunks_s:.0f} chunks/s, {processor.stats['flushes']} flushes); "
        f"fin (verify + commit + record) {fin_s:.2f} s = {mb / fin_s:.0f} MB/s; "
        f"end to end {mb / (chunks_s + fin_s):.0f} MB/s"
    )
    engine.dispose()


if __name__ == "__main__":
    main()
