"""Two ingest processors (workers X and Y) staging in the database, on one PostgreSQL schema and
one evidence store, interleaved by hand where the broker could interleave them: the same fin on
both, a chunk re-sent to a worker whose cache is stale, two flushes counting refusals in
opposite orders."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import START, Harness, make_upload, staged_chunks
from sqlalchemy import select

from common import topics
from common.clock import VirtualClock
from common.schemas import AckState
from common.signing import generate_private_key
from ingest_server.clip_checks import ClipChecker
from ingest_server.db import migrate
from ingest_server.models import Clip, ClipCheck, Rejection, Upload
from ingest_server.settings import Settings
from ingest_server.uploads import rejections
from ingest_server.uploads.reaper import UploadReaper


@pytest.fixture
def workers(
    pg_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> Iterator[tuple[Harness, Harness]]:
    migrate(pg_url)
    settings = Settings(data_dir=tmp_path, database_url=pg_url, staging="database")
    clock = VirtualClock(START + timedelta(minutes=5))
    x = Harness(pg_url, tmp_path / "evidence", settings, clock)
    x.register("dev-1", key)
    y = Harness(pg_url, tmp_path / "evidence", settings, clock)  # the same store directory
    try:
        yield x, y
    finally:
        x.close()
        y.close()


def test_the_same_fin_on_two_workers_completes_on_both(
    workers: tuple[Harness, Harness], tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """Y looks for the stored clip before X stores and records it (deleting the staged rows),
    then assembles from no rows: Y must answer complete, not blame every chunk."""
    x, y = workers
    up = make_upload(tmp_path / "device", key, "dev-1", "u-1", size=8 * 4096 + 11)
    x.send(up.init_topic(), up.init_payload)
    x.send_chunks(up)
    x.flush()
    looked = y.store.committed_sha256
    x_acks = []

    def x_finishes_meanwhile(relative: str) -> str | None:
        seen = looked(relative)  # None: X has not stored the clip yet
        x_acks.extend(x.send(up.fin_topic(), up.fin_payload()))
        return seen

    y.store.committed_sha256 = x_finishes_meanwhile  # type: ignore[method-assign]
    y_acks = y.send(up.fin_topic(), up.fin_payload())
    assert [a.state for a in x_acks] == [AckState.COMPLETE]
    assert [(a.state, a.reason) for a in y_acks] == [(AckState.COMPLETE, None)]
    with x.sessions() as db:
        row = db.get(Upload, ("u-1", "dev-1"))
        assert row is not None and row.state == "complete" and row.ranges == [(0, up.manifest.size)]
        assert len(db.scalars(select(Clip)).all()) == 1
        assert db.scalars(select(Rejection)).all() == []  # nobody was blamed


def test_a_chunk_resent_to_a_worker_with_a_stale_cache_is_staged(
    workers: tuple[Harness, Harness], tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """X saw chunk 0 committed before the upload expired; Y restarts it; the device sends chunk
    0 again and the broker hands it to X, whose cache still lists it as received."""
    x, y = workers
    up = make_upload(tmp_path / "device", key, "dev-1", "u-2", size=3 * 4096)
    x.send(up.init_topic(), up.init_payload)
    x.send_chunks(up, [0])
    x.flush()
    x.clock.advance(x.settings.upload_stale_after_s + 60)
    assert UploadReaper(x.sessions, x.store, x.settings, x.clock).run().expired == 1
    assert staged_chunks(x.sessions, "dev-1", "u-2") == {}
    [ack] = y.send(up.init_topic(), up.init_payload)  # started again, on Y
    assert ack.missing == [(0, up.manifest.size)]
    x.send_chunks(up)
    x.flush()
    assert sorted(staged_chunks(x.sessions, "dev-1", "u-2")) == [0, 4096, 8192]
    [done] = y.send(up.fin_topic(), up.fin_payload())
    assert done.state is AckState.COMPLETE


def test_two_flushes_counting_refusals_in_opposite_orders_do_not_deadlock(
    workers: tuple[Harness, Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = workers
    x.register("dev-2", generate_private_key())
    # Chunks of uploads that do not exist: refused and counted per (device, reason), heard
    # by X as dev-1 then dev-2, by Y the other way round.
    x.send(topics.file_chunk("dev-1", "nope", 0), b"x")
    x.send(topics.file_chunk("dev-2", "nope", 0), b"x")
    y.send(topics.file_chunk("dev-2", "nope", 0), b"x")
    y.send(topics.file_chunk("dev-1", "nope", 0), b"x")
    for device in ("dev-1", "dev-2"):  # the counters exist: an upsert locks its row
        with x.sessions.begin() as db:
            rejections._upsert_count(db, device, "unknown_upload", 0, x.clock.now(), x.clock.now())
    real = rejections._upsert_count
    both_hold_one = threading.Barrier(2, timeout=2)
    upserts: dict[int, int] = {}

    def paced(db: Any, *args: Any) -> None:
        real(db, *args)
        me = threading.get_ident()
        upserts[me] = upserts.get(me, 0) + 1
        if upserts[me] == 1:  # each holds its first row's lock before taking its second
            # Broken when the other waits on our lock: the order is one and the same.
            with contextlib.suppress(threading.BrokenBarrierError):
                both_hold_one.wait()

    monkeypatch.setattr(rejections, "_upsert_count", paced)
    errors: list[BaseException] = []

    def flush(h: Harness) -> None:
        try:
            h.flush()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=flush, args=(h,)) for h in (x, y)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    with x.sessions() as db:
        counts = db.execute(
            select(rejections.RejectionCount.device_id, rejections.RejectionCount.count)
        ).all()
    assert sorted(counts) == [("dev-1", 2), ("dev-2", 2)]


def test_a_device_cannot_stage_more_than_its_byte_allowance(
    sqlite_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=sqlite_url,
        staging="database",
        max_open_bytes_per_device=5000,
    )
    h = Harness(sqlite_url, tmp_path / "evidence", settings)
    h.register("dev-1", key)
    try:
        first = make_upload(tmp_path / "device", key, "dev-1", "b-1", size=3000, chunk_size=1024)
        second = make_upload(tmp_path / "device", key, "dev-1", "b-2", size=3000, chunk_size=1024)
        assert [a.state for a in h.send(first.init_topic(), first.init_payload)] == [
            AckState.MISSING
        ]
        [refused] = h.send(second.init_topic(), second.init_payload)
        assert (refused.state, refused.reason) == (AckState.REJECTED, "too_many_uploads")
        h.send_chunks(first)
        assert h.send(first.fin_topic(), first.fin_payload())[0].state is AckState.COMPLETE
        [ack] = h.send(second.init_topic(), second.init_payload)  # room again
        assert ack.state is AckState.MISSING
    finally:
        h.close()


def test_each_worker_checks_its_own_clips_and_takes_over_only_old_ones(
    workers: tuple[Harness, Harness], tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    x, y = workers

    def stored_on_x(upload_id: str) -> int:
        up = make_upload(tmp_path / "device", key, "dev-1", upload_id, size=3 * 4096)
        x.send(up.init_topic(), up.init_payload)
        x.send_chunks(up)
        assert x.send(up.fin_topic(), up.fin_payload())[0].state is AckState.COMPLETE
        with x.sessions() as db:
            return db.scalars(select(Clip.id).where(Clip.upload_id == upload_id)).one()

    clip_id = stored_on_x("u-3")

    def checked() -> bool:
        with x.sessions() as db:
            check = db.get(ClipCheck, clip_id)
            return check is not None and check.checked_at is not None

    def checker(h: Harness) -> ClipChecker:
        return ClipChecker(h.sessions, h.store, lambda ids: None, h.clock, others_after_s=120)

    theirs, mine = checker(y), checker(x)
    try:
        theirs.wake().result(timeout=60)
        assert not checked(), "Y decoded a clip X had just stored"
        x.clock.advance(121)  # X never checked it (it died): Y takes it over
        theirs.wake().result(timeout=60)
        assert checked()
        # The storer checks its own at once, however young.
        clip_id = stored_on_x("u-4")
        theirs.wake().result(timeout=60)
        assert not checked()
        mine.clip_stored(clip_id).result(timeout=60)
        assert checked()
    finally:
        theirs.close()
        mine.close()
