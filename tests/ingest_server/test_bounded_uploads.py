"""Nothing a device sends grows the server without bound (issue 8, finding 9).

Refusals are exact counters plus a bounded sample; a device may hold only so many uploads open;
uploads nobody finishes are reaped with their staging files, and can start again later."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import START, Harness, make_upload, staged_chunks
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common import topics
from common.clock import VirtualClock
from common.schemas import RETRYABLE_REJECTIONS, AckReplyTo, AckState, RejectReason
from common.signing import public_key_b64
from ingest_server import crud
from ingest_server.core import ServerCore
from ingest_server.db import migrate
from ingest_server.models import Clip, Rejection, RejectionCount, Upload, UploadChunk
from ingest_server.settings import Settings
from ingest_server.store import staging_key
from ingest_server.uploads.reaper import UploadReaper


def counts_by_device(session: Session) -> dict[tuple[str, str], int]:
    """Every refusal ever counted, by (device, reason); an unknown device is ``""``."""
    rows = session.execute(
        select(RejectionCount.device_id, RejectionCount.reason, RejectionCount.count)
    )
    return {(device, reason): int(count) for device, reason, count in rows}


def _rejection_rows(harness: Harness) -> int:
    with harness.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Rejection)) or 0)


def _staging_files(harness: Harness) -> list[Path]:
    return sorted(harness.store.staging.glob("*.part"))


def _staged_uploads(harness: Harness) -> set[str]:
    """The uploads with chunks staged in the database."""
    with harness.sessions() as session:
        return set(session.scalars(select(UploadChunk.upload_id).distinct()))


def _bounded_harness(url: str, tmp_path: Path, key: Ed25519PrivateKey, **limits: object) -> Harness:
    evidence = tmp_path / "evidence"
    settings = Settings(data_dir=tmp_path, database_url=url, **limits)  # type: ignore[arg-type]
    harness = Harness(url, evidence, settings)
    harness.register("dev-1", key)
    return harness


def _flood(harness: Harness, messages: int) -> None:
    """Bad messages as the consumer would feed them: chunks of uploads that do not exist and,
    one in a hundred, an init that is not JSON; a flush every 256 messages."""
    for i in range(messages):
        if i % 100 == 99:
            harness.send(topics.file_init("dev-1", f"junk-{i}"), b"{not json")
        else:
            harness.send(topics.file_chunk("dev-1", f"nope-{i % 700}", 0), b"x")
        if i % 256 == 255:
            harness.flush()
    harness.flush()


def test_ten_thousand_bad_messages_leave_exact_counters_and_a_bounded_sample(
    sqlite_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    harness = _bounded_harness(
        sqlite_url, tmp_path, key, rejection_sample_per_reason=50, rejection_sample_max=80
    )
    try:
        _flood(harness, 10_000)
        with harness.sessions() as session:
            assert crud.rejection_counts(session) == {
                "unknown_upload": 9_900,
                "malformed_json": 100,
            }
            assert counts_by_device(session) == {
                ("dev-1", "unknown_upload"): 9_900,
                ("dev-1", "malformed_json"): 100,
            }
            reasons = list(session.scalars(select(Rejection.reason).order_by(Rejection.id)))
        # 50 per reason would be 100 rows: the global cap keeps the newest 80.
        assert len(reasons) == 80
        assert set(reasons) == {"unknown_upload", "malformed_json"}
        # Another flood only moves the counters.
        _flood(harness, 1_000)
        with harness.sessions() as session:
            assert crud.rejection_counts(session) == {
                "unknown_upload": 10_890,
                "malformed_json": 110,
            }
        assert _rejection_rows(harness) == 80
    finally:
        harness.close()


def test_rejections_on_postgresql_are_counted_and_bounded_too(
    pg_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    migrate(pg_url)
    harness = _bounded_harness(
        pg_url, tmp_path, key, rejection_sample_per_reason=20, rejection_sample_max=1000
    )
    try:
        _flood(harness, 2_000)
        with harness.sessions() as session:
            assert crud.rejection_counts(session) == {"unknown_upload": 1_980, "malformed_json": 20}
        assert _rejection_rows(harness) == 40
    finally:
        harness.close()


@pytest.mark.parametrize("staging", ["local", "database"])
def test_a_device_opening_a_thousand_uploads_is_capped_and_told_to_retry(
    sqlite_url: str, tmp_path: Path, key: Ed25519PrivateKey, staging: str
) -> None:
    harness = _bounded_harness(
        sqlite_url, tmp_path, key, max_open_uploads_per_device=32, staging=staging
    )
    device = tmp_path / "device"
    try:
        first = make_upload(device, key, "dev-1", "keep-0", size=3000, chunk_size=1024)
        harness.send(first.init_topic(), first.init_payload)
        harness.send_chunks(first, [0])  # an accepted upload, half sent
        refused = 0
        accepted = []
        for i in range(1, 1000):
            upload = make_upload(device, key, "dev-1", f"open-{i}", size=100, chunk_size=1024)
            [ack] = harness.send(upload.init_topic(), upload.init_payload)
            if ack.state is AckState.REJECTED:
                assert ack.reason is RejectReason.TOO_MANY_UPLOADS
                assert ack.reason in RETRYABLE_REJECTIONS and ack.reply_to is AckReplyTo.INIT
                refused += 1
            else:
                assert ack.state is AckState.MISSING
                accepted.append(upload)
        assert refused == 1000 - 32
        with harness.sessions() as session:
            receiving = session.scalar(
                select(func.count()).select_from(Upload).where(Upload.state == "receiving")
            )
        assert receiving == 32
        if staging == "local":  # a staging file per accepted upload, none for the refused
            assert len(_staging_files(harness)) == 32
        else:  # nothing staged for the refused ones (nor, yet, for the accepted empty ones)
            assert _staged_uploads(harness) == {"keep-0"}
        # The accepted upload is undisturbed: it finishes, and frees a place.
        harness.send_chunks(first, [1024, 2048])
        [done] = harness.send(first.fin_topic(), first.fin_payload())
        assert done.state is AckState.COMPLETE
        late = make_upload(device, key, "dev-1", "late", size=100, chunk_size=1024)
        assert [a.state for a in harness.send(late.init_topic(), late.init_payload)] == [
            AckState.MISSING
        ]
        # A re-init of an upload already open is not a new one: never refused by the cap.
        [ack] = harness.send(accepted[0].init_topic(), accepted[0].init_payload)
        assert ack.state is AckState.MISSING
        assert harness.processor.counters["too_many_uploads"] == 1000 - 32
        # Another device has its own allowance.
        harness.register("dev-2", key)
        other = make_upload(device, key, "dev-2", "other", size=100, chunk_size=1024)
        assert [a.state for a in harness.send(other.init_topic(), other.init_payload)] == [
            AckState.MISSING
        ]
    finally:
        harness.close()


def _is_staged(harness: Harness, upload_id: str) -> bool:
    """Whether dev-1's upload has bytes staged: a staging file, or rows (``database``)."""
    path = harness.store.staging_path(staging_key("dev-1", upload_id))
    return path.exists() or bool(harness.staged("dev-1", upload_id))


@pytest.mark.parametrize("staging", ["local", "database"])
def test_a_stale_upload_is_reaped_with_its_staged_bytes_and_can_start_again(
    sqlite_url: str, tmp_path: Path, key: Ed25519PrivateKey, staging: str
) -> None:
    stale_after = 2 * 24 * 3600.0
    harness = _bounded_harness(
        sqlite_url,
        tmp_path,
        key,
        upload_stale_after_s=stale_after,
        upload_reap_interval_s=600,
        staging=staging,
    )
    reaper = UploadReaper(harness.sessions, harness.store, harness.settings, harness.clock)
    device = tmp_path / "device"
    try:
        stale = make_upload(device, key, "dev-1", "stale", size=5000, chunk_size=1024)
        harness.send(stale.init_topic(), stale.init_payload)
        harness.send_chunks(stale, [0, 1024])
        harness.flush()
        assert _is_staged(harness, "stale")
        # A file a worker was assembling when it crashed, with no upload. File times on the
        # test's clock.
        orphan = harness.store.staging_path("0" * 48)
        orphan.write_bytes(b"left over")
        written = harness.clock.now().timestamp()
        os.utime(orphan, (written, written))

        harness.clock.advance(stale_after - 60)
        fresh = make_upload(device, key, "dev-1", "fresh", size=3000, chunk_size=1024)
        harness.send(fresh.init_topic(), fresh.init_payload)
        harness.send_chunks(fresh, [0])
        harness.flush()
        assert reaper.maybe_run() is not None  # the first tick reaps
        assert _is_staged(harness, "stale")  # not stale yet
        assert orphan.exists()

        harness.clock.advance(120)
        assert reaper.maybe_run() is None  # within the interval: nothing done
        harness.clock.advance(600)
        report = reaper.maybe_run()
        assert report is not None and (report.expired, report.orphan_files) == (1, 1)
        assert not _is_staged(harness, "stale") and not orphan.exists()
        assert _is_staged(harness, "fresh")
        with harness.sessions() as session:
            row = session.get(Upload, ("stale", "dev-1"))
            assert row is not None and row.state == "expired" and row.ranges == []
            fresh_row = session.get(Upload, ("fresh", "dev-1"))
            assert fresh_row is not None and fresh_row.state == "receiving"
        assert reaper.stats["uploads_expired"] == 1

        # The device's fin, late: told to start again, in a way it retries.
        [ack] = harness.send(stale.fin_topic(), stale.fin_payload())
        assert (ack.state, ack.reason) == (AckState.REJECTED, RejectReason.UPLOAD_EXPIRED)
        assert ack.reason in RETRYABLE_REJECTIONS
        # A later init starts clean: every byte missing, and the upload completes.
        [ack] = harness.send(stale.init_topic(), stale.init_payload)
        assert (ack.state, ack.missing) == (AckState.MISSING, [(0, stale.manifest.size)])
        harness.send_chunks(stale)
        [done] = harness.send(stale.fin_topic(), stale.fin_payload())
        assert done.state is AckState.COMPLETE
        assert harness.store.path_of(_clip_path(harness, "stale")).read_bytes() == stale.data
        assert not _is_staged(harness, "stale")
    finally:
        harness.close()


def _clip_path(harness: Harness, upload_id: str) -> str:
    with harness.sessions() as session:
        path = session.scalar(select(Clip.path).where(Clip.upload_id == upload_id))
    assert path is not None
    return path


def test_a_chunk_committed_before_the_reaper_keeps_its_upload(
    sqlite_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    harness = _bounded_harness(sqlite_url, tmp_path, key, upload_stale_after_s=3600.0)
    reaper = UploadReaper(harness.sessions, harness.store, harness.settings, harness.clock)
    try:
        upload = make_upload(tmp_path / "device", key, "dev-1", "slow", size=3000, chunk_size=1024)
        harness.send(upload.init_topic(), upload.init_payload)
        harness.clock.advance(3000)
        harness.send_chunks(upload, [0])
        harness.flush()  # a chunk, durable: the clock of staleness starts again
        harness.clock.advance(3000)
        assert reaper.run().expired == 0
        harness.clock.advance(700)
        assert reaper.run().expired == 1
    finally:
        harness.close()


def test_the_running_server_reaps_from_its_scheduler_tick(
    sqlite_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=sqlite_url,
        upload_stale_after_s=3600.0,
        api_port=0,
        staging="database",
    )
    clock = VirtualClock(START)
    core = ServerCore(settings, clock)
    try:
        with core.session_factory.begin() as session:
            crud.register_device(session, "dev-1", public_key_b64(key))
        upload = make_upload(tmp_path / "device", key, "dev-1", "idle", size=3000, chunk_size=1024)
        core.processor.handle(upload.init_topic(), upload.init_payload)
        core.processor.handle(upload.chunk_topic(0), upload.chunks[0][1])
        core.processor.flush()
        assert sorted(staged_chunks(core.session_factory, "dev-1", "idle")) == [0]
        clock.advance(3601)
        core.scheduler.tick()
        with core.session_factory() as session:
            row = session.get(Upload, ("idle", "dev-1"))
            assert row is not None and row.state == "expired"
        assert staged_chunks(core.session_factory, "dev-1", "idle") == {}
        assert core.reaper.stats["uploads_expired"] == 1
    finally:
        core.close()


def test_the_reaper_and_the_cap_on_postgresql(
    pg_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    migrate(pg_url)
    harness = _bounded_harness(
        pg_url, tmp_path, key, upload_stale_after_s=3600.0, max_open_uploads_per_device=2
    )
    reaper = UploadReaper(harness.sessions, harness.store, harness.settings, harness.clock)
    device = tmp_path / "device"
    try:
        uploads = [
            make_upload(device, key, "dev-1", f"pg-{i}", size=3000, chunk_size=1024)
            for i in range(3)
        ]
        states = [harness.send(u.init_topic(), u.init_payload)[0].state for u in uploads]
        assert states == [AckState.MISSING, AckState.MISSING, AckState.REJECTED]
        harness.clock.advance(3601)
        assert reaper.run().expired == 2
        # Both places are free again; the expired one starts from nothing.
        [ack] = harness.send(uploads[2].init_topic(), uploads[2].init_payload)
        assert ack.state is AckState.MISSING
        [ack] = harness.send(uploads[0].init_topic(), uploads[0].init_payload)
        assert (ack.state, ack.missing) == (AckState.MISSING, [(0, 3000)])
        harness.send_chunks(uploads[0])
        [done] = harness.send(uploads[0].fin_topic(), uploads[0].fin_payload())
        assert done.state is AckState.COMPLETE
    finally:
        harness.close()
