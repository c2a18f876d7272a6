"""The ingest processor on a real SQLite file and a real evidence store: every protocol path."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import Harness, TestUpload, make_upload, stored_files
from sqlalchemy import func, select

from common import topics
from common.schemas import Ack, AckReplyTo, AckState, RejectReason
from common.signing import generate_private_key
from ingest_server.models import Clip, Rejection, Upload
from ingest_server.store import staging_key


def _upload(
    harness: Harness,
    tmp_path: Path,
    key: Ed25519PrivateKey,
    upload_id: str = "up-1",
    **kwargs: object,
) -> TestUpload:
    return make_upload(tmp_path / "device", key, "dev-1", upload_id, **kwargs)  # type: ignore[arg-type]


def _rejections(harness: Harness) -> list[Rejection]:
    with harness.sessions() as session:
        return list(session.scalars(select(Rejection).order_by(Rejection.id)))


def _upload_row(harness: Harness, upload_id: str) -> Upload | None:
    with harness.sessions() as session:
        return session.get(Upload, (upload_id, "dev-1"))


def _clip_count(harness: Harness) -> int:
    with harness.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Clip)) or 0)


def _assert_nothing_stored(harness: Harness) -> None:
    assert stored_files(harness.store.root) == []
    assert _clip_count(harness) == 0


def test_happy_path_stores_identical_bytes_records_clip_and_acks_complete(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    upload = _upload(harness, tmp_path, key)
    init_acks = harness.send(upload.init_topic(), upload.init_payload)
    assert [(a.state, a.reply_to, a.missing) for a in init_acks] == [
        (AckState.MISSING, AckReplyTo.INIT, [(0, upload.manifest.size)])
    ]
    assert harness.send_chunks(upload) == []  # chunks are not acked one by one
    fin_acks = harness.send(upload.fin_topic(), upload.fin_payload())
    assert [(a.state, a.reply_to, a.upload_id) for a in fin_acks] == [
        (AckState.COMPLETE, AckReplyTo.FIN, "up-1")
    ]

    relative = "clips/dev-1/2026-03-02/up-1.mp4"
    assert (harness.store.root / relative).read_bytes() == upload.data
    assert stored_files(harness.store.root) == [harness.store.root / relative]  # staging gone
    with harness.sessions() as session:
        clip = session.scalars(select(Clip)).one()
        row = session.get(Upload, ("up-1", "dev-1"))
    assert clip.path == relative and clip.sha256 == upload.manifest.sha256
    assert clip.size == upload.manifest.size and clip.session_id == "sess-1"
    assert clip.cut_start == upload.manifest.cut_start
    assert clip.requested_end == upload.manifest.requested_end
    assert row is not None and row.state == "complete"
    assert row.chunks_received == len(upload.chunks) and row.chunks_duplicate == 0
    # The signed manifest is kept verbatim, signature included.
    assert row.manifest.encode() == upload.init_payload
    assert harness.processor.counters == {}


def test_out_of_order_and_duplicate_chunks(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    upload = _upload(harness, tmp_path, key)
    harness.send(upload.init_topic(), upload.init_payload)
    shuffled = list(upload.chunks)
    random.Random(7).shuffle(shuffled)
    for offset, data in shuffled + shuffled[:3]:
        assert harness.send(upload.chunk_topic(offset), data) == []
    harness.flush()
    # Duplicates after a flush are recognised from durable state too.
    offset, data = upload.chunks[0]
    harness.send(upload.chunk_topic(offset), data)
    [ack] = harness.send(upload.fin_topic(), upload.fin_payload())
    assert ack.state is AckState.COMPLETE
    row = _upload_row(harness, "up-1")
    assert row is not None
    assert (row.chunks_received, row.chunks_duplicate) == (len(upload.chunks), 4)
    assert harness.processor.stats["duplicate_chunks"] == 4
    assert (harness.store.root / "clips/dev-1/2026-03-02/up-1.mp4").read_bytes() == upload.data


def test_fin_with_chunks_missing_lists_exactly_them(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    upload = _upload(harness, tmp_path, key, chunk_size=4096, size=6 * 4096)
    harness.send(upload.init_topic(), upload.init_payload)
    harness.send_chunks(upload, [0, 2 * 4096, 3 * 4096, 5 * 4096])
    [ack] = harness.send(upload.fin_topic(), upload.fin_payload())
    assert (ack.state, ack.reply_to) == (AckState.MISSING, AckReplyTo.FIN)
    assert ack.missing == [(4096, 2 * 4096), (4 * 4096, 5 * 4096)]
    harness.send_chunks(upload, [4096, 4 * 4096])
    [ack] = harness.send(upload.fin_topic(), upload.fin_payload())
    assert ack.state is AckState.COMPLETE


def test_restart_continues_from_durable_ranges(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    upload = _upload(harness, tmp_path, key, chunk_size=4096, size=8 * 4096)
    harness.send(upload.init_topic(), upload.init_payload)
    harness.send_chunks(upload, [0, 4096, 2 * 4096])
    harness.flush()  # these three are now durable
    harness.send_chunks(upload, [3 * 4096])  # written, never flushed: "lost in the crash"

    harness.restart()
    [ack] = harness.send(upload.init_topic(), upload.init_payload)
    assert (ack.state, ack.reply_to) == (AckState.MISSING, AckReplyTo.INIT)
    assert ack.missing == [(3 * 4096, 8 * 4096)]
    harness.send_chunks(upload, [o for o, _ in upload.chunks if o >= 3 * 4096])
    [ack] = harness.send(upload.fin_topic(), upload.fin_payload())
    assert ack.state is AckState.COMPLETE
    assert (harness.store.root / "clips/dev-1/2026-03-02/up-1.mp4").read_bytes() == upload.data


def test_reinit_after_complete_acks_complete(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    upload = _upload(harness, tmp_path, key)
    assert harness.upload(upload)[-1].state is AckState.COMPLETE
    for _ in range(2):
        harness.restart()
        [ack] = harness.send(upload.init_topic(), upload.init_payload)
        assert (ack.state, ack.reply_to) == (AckState.COMPLETE, AckReplyTo.INIT)
        [ack] = harness.send(upload.fin_topic(), upload.fin_payload())
        assert ack.state is AckState.COMPLETE
    # A late chunk after completion changes nothing and is not complained about.
    offset, data = upload.chunks[1]
    assert harness.send(upload.chunk_topic(offset), data) == []
    assert harness.flush() == []
    assert _clip_count(harness) == 1


@pytest.fixture(params=["local", "database"])
def either(
    request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> Iterator[Harness]:
    """``harness`` staging in files (one process) or in the database (several workers)."""
    h = Harness(sqlite_url, tmp_path / "evidence", staging=request.param)
    h.register("dev-1", key)
    try:
        yield h
    finally:
        h.close()


def _staged_anywhere(harness: Harness, upload_id: str) -> bool:
    """Whether anything is still staged for dev-1's upload: its file, or its chunks' rows."""
    path = harness.store.staging_path(staging_key("dev-1", upload_id))
    return path.exists() or bool(harness.staged("dev-1", upload_id))


def test_chunk_corrupted_in_staging_is_asked_for_again(
    either: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    harness = either
    upload = _upload(harness, tmp_path, key, chunk_size=4096, size=5 * 4096 + 10)
    harness.send(upload.init_topic(), upload.init_payload)
    harness.send_chunks(upload)
    harness.flush()
    # A flipped bit in chunk 2, after it was verified and staged.
    harness.spoil_staged("dev-1", "up-1", 2 * 4096 + 17)

    [ack] = harness.send(upload.fin_topic(), upload.fin_payload())
    assert (ack.state, ack.reply_to, ack.reason) == (
        AckState.MISSING,
        AckReplyTo.FIN,
        RejectReason.HASH_MISMATCH,
    )
    assert ack.missing == [(2 * 4096, 3 * 4096)]
    assert _clip_count(harness) == 0
    assert [r.reason for r in _rejections(harness)] == ["hash_mismatch"]

    harness.send_chunks(upload, [2 * 4096])
    [ack] = harness.send(upload.fin_topic(), upload.fin_payload())
    assert ack.state is AckState.COMPLETE
    assert (harness.store.root / "clips/dev-1/2026-03-02/up-1.mp4").read_bytes() == upload.data


def test_fin_finishes_when_a_crash_left_the_clip_committed_but_unrecorded(
    either: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    harness = either
    upload = _upload(harness, tmp_path, key)
    harness.send(upload.init_topic(), upload.init_payload)
    harness.send_chunks(upload)
    harness.flush()
    # The crash: the store move happened, the database transaction did not.
    harness.store.put_bytes("clips/dev-1/2026-03-02/up-1.mp4", upload.data)
    harness.restart()
    assert _staged_anywhere(harness, "up-1")
    [ack] = harness.send(upload.fin_topic(), upload.fin_payload())
    assert ack.state is AckState.COMPLETE
    assert _clip_count(harness) == 1
    assert not _staged_anywhere(harness, "up-1")  # the staged bytes go with the recording


# ------------------------------------------------------------------ refusals


def _assert_refused(
    harness: Harness, acks: list[Ack], reason: RejectReason, state: AckState = AckState.REJECTED
) -> Ack:
    assert [(a.state, a.reason) for a in acks] == [(state, reason)]
    assert [r.reason for r in _rejections(harness)] == [reason.value]
    assert harness.processor.counters == {reason.value: 1}
    return acks[0]


def test_unknown_device_is_rejected(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    upload = make_upload(tmp_path / "d", key, "dev-9", "up-1")
    ack = _assert_refused(
        harness, harness.send(upload.init_topic(), upload.init_payload), RejectReason.UNKNOWN_DEVICE
    )
    assert ack.reply_to is AckReplyTo.INIT
    _assert_nothing_stored(harness)
    assert _upload_row(harness, "up-1") is None


def test_signature_by_another_key_is_rejected(harness: Harness, tmp_path: Path) -> None:
    upload = make_upload(tmp_path / "d", generate_private_key(), "dev-1", "up-1")
    _assert_refused(
        harness,
        harness.send(upload.init_topic(), upload.init_payload),
        RejectReason.SIGNATURE_INVALID,
    )
    _assert_nothing_stored(harness)
    assert _upload_row(harness, "up-1") is None


def test_manifest_of_another_device_is_rejected(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    harness.register("dev-2", key)
    upload = make_upload(tmp_path / "d", key, "dev-1", "up-1", manifest_device_id="dev-2")
    ack = _assert_refused(
        harness,
        harness.send(upload.init_topic(), upload.init_payload),
        RejectReason.DEVICE_MISMATCH,
    )
    assert ack.upload_id == "up-1"
    _assert_nothing_stored(harness)


def test_malformed_json_init_and_fin_are_rejected(harness: Harness, tmp_path: Path) -> None:
    topic = topics.file_init("dev-1", "up-1")
    _assert_refused(harness, harness.send(topic, b"{not json"), RejectReason.MALFORMED_JSON)
    [ack] = harness.send(topics.file_fin("dev-1", "up-1"), b"\xff\xfe")
    assert (ack.state, ack.reason, ack.reply_to) == (
        AckState.REJECTED,
        RejectReason.MALFORMED_JSON,
        AckReplyTo.FIN,
    )
    assert harness.processor.counters == {"malformed_json": 2}
    # Valid JSON that is not a manifest is a different reason.
    [ack] = harness.send(topic, json.dumps({"upload_id": "up-1"}).encode())
    assert ack.reason is RejectReason.INVALID_MANIFEST
    assert len(_rejections(harness)) == 3
    _assert_nothing_stored(harness)


def test_chunk_of_unknown_upload_is_rejected_at_flush(harness: Harness) -> None:
    assert harness.send(topics.file_chunk("dev-1", "nope", 0), b"x" * 10) == []
    assert harness.send(topics.file_chunk("dev-1", "nope", 10), b"x" * 10) == []
    [ack] = harness.flush()  # one ack per upload and reason, however many chunks
    assert (ack.state, ack.reason) == (AckState.REJECTED, RejectReason.UNKNOWN_UPLOAD)
    assert [r.reason for r in _rejections(harness)] == ["unknown_upload"] * 2
    assert harness.processor.counters == {"unknown_upload": 2}
    assert ack.reply_to is AckReplyTo.CHUNK and ack.upload_id == "nope"
    _assert_nothing_stored(harness)


def test_upload_of_another_device_is_unknown_to_a_device(
    either: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    harness = either
    harness.register("dev-2", key)
    upload = _upload(harness, tmp_path, key)
    harness.send(upload.init_topic(), upload.init_payload)
    offset, data = upload.chunks[0]
    harness.send(topics.file_chunk("dev-2", "up-1", offset), data)
    [ack] = harness.flush()
    assert (ack.state, ack.reason) == (AckState.REJECTED, RejectReason.UNKNOWN_UPLOAD)
    # Nothing of dev-2's reached dev-1's upload.
    assert harness.staged("dev-1", "up-1") == {}
    staged = harness.store.staging_path(staging_key("dev-1", "up-1"))
    assert not staged.exists() or staged.read_bytes() == b"\0" * upload.manifest.size


@pytest.mark.parametrize(
    ("offset", "length", "reason"),
    [
        (100, 4096, RejectReason.BAD_OFFSET),
        (10 * 4096, 4096, RejectReason.BAD_OFFSET),
        (0, 4097, RejectReason.OVERSIZE_CHUNK),
        (0, 4000, RejectReason.SIZE_MISMATCH),
    ],
)
def test_bad_chunks_are_refused_and_the_upload_goes_on(
    harness: Harness,
    tmp_path: Path,
    key: Ed25519PrivateKey,
    offset: int,
    length: int,
    reason: RejectReason,
) -> None:
    upload = _upload(harness, tmp_path, key)
    harness.send(upload.init_topic(), upload.init_payload)
    assert harness.send(upload.chunk_topic(offset), upload.data[:length]) == []
    ack = _assert_refused(harness, harness.flush(), reason, AckState.MISSING)
    assert ack.reply_to is AckReplyTo.CHUNK and ack.detail
    assert ack.missing == [(0, upload.manifest.size)]  # nothing was recorded
    assert harness.upload(upload)[-1].state is AckState.COMPLETE


def test_chunk_hash_mismatch_is_not_recorded(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    upload = _upload(harness, tmp_path, key)
    harness.send(upload.init_topic(), upload.init_payload)
    harness.send_chunks(upload)
    offset, data = upload.chunks[1]
    # A corrupted re-send of a chunk already received is refused and does not overwrite it.
    harness.send(upload.chunk_topic(offset), bytes([data[0] ^ 0xFF]) + data[1:])
    ack = _assert_refused(
        harness, harness.flush(), RejectReason.CHUNK_HASH_MISMATCH, AckState.MISSING
    )
    assert ack.missing == []
    [ack] = harness.send(upload.fin_topic(), upload.fin_payload())
    assert ack.state is AckState.COMPLETE
    assert (harness.store.root / "clips/dev-1/2026-03-02/up-1.mp4").read_bytes() == upload.data


def test_chunk_hash_mismatch_before_receipt_leaves_the_range_missing(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    upload = _upload(harness, tmp_path, key, chunk_size=4096, size=3 * 4096)
    harness.send(upload.init_topic(), upload.init_payload)
    harness.send(upload.chunk_topic(0), b"\0" * 4096)
    harness.send_chunks(upload, [4096, 2 * 4096])
    ack = _assert_refused(
        harness, harness.flush(), RejectReason.CHUNK_HASH_MISMATCH, AckState.MISSING
    )
    assert ack.missing == [(0, 4096)]


def test_upload_conflict_keeps_the_first_upload(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    first = _upload(harness, tmp_path, key)
    harness.send(first.init_topic(), first.init_payload)
    other = make_upload(tmp_path / "other", key, "dev-1", "up-1")
    _assert_refused(
        harness, harness.send(other.init_topic(), other.init_payload), RejectReason.UPLOAD_CONFLICT
    )
    row = _upload_row(harness, "up-1")
    assert row is not None and row.sha256 == first.manifest.sha256 and row.state == "receiving"
    assert harness.upload(first)[-1].state is AckState.COMPLETE


def test_fin_contradicting_the_manifest_rejects_the_upload(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    upload = _upload(harness, tmp_path, key)
    harness.send(upload.init_topic(), upload.init_payload)
    harness.send_chunks(upload)
    bad_fin = json.loads(upload.fin_payload())
    bad_fin["size"] += 1
    [ack] = harness.send(upload.fin_topic(), json.dumps(bad_fin).encode())
    assert (ack.state, ack.reason) == (AckState.REJECTED, RejectReason.SIZE_MISMATCH)
    row = _upload_row(harness, "up-1")
    assert row is not None and (row.state, row.reject_reason) == ("rejected", "size_mismatch")
    _assert_nothing_stored(harness)  # staging removed
    [ack] = harness.send(upload.init_topic(), upload.init_payload)
    assert (ack.state, ack.reason) == (AckState.REJECTED, RejectReason.SIZE_MISMATCH)


def test_bad_topics_are_counted_and_other_kinds_ignored(harness: Harness) -> None:
    assert harness.send("something/else", b"x") == []
    assert harness.send("classcam/v1/up/dev-1/file/up-1/unknown", b"x") == []
    assert harness.send(topics.heartbeat("dev-1"), b"{}") == []
    assert harness.processor.counters == {"bad_topic": 2}
    assert harness.processor.stats["ignored_heartbeat"] == 1
    assert harness.flush() == []
    assert _rejections(harness) == []


def test_chunk_topic_with_a_bad_offset_is_answered(harness: Harness) -> None:
    assert harness.send("classcam/v1/up/dev-1/file/up-1/chunk/-5", b"x") == []
    ack = _assert_refused(harness, harness.flush(), RejectReason.BAD_OFFSET, AckState.MISSING)
    assert (ack.upload_id, ack.reply_to) == ("up-1", AckReplyTo.CHUNK)


def test_json_nested_deeper_than_the_stack_is_refused_not_a_crash(harness: Harness) -> None:
    """A hostile ``init`` nested 100,000 deep raised RecursionError: no reply, no record."""
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    for topic in (topics.file_init("dev-1", "up-1"), topics.file_fin("dev-1", "up-1")):
        [ack] = harness.send(topic, deep)
        assert (ack.state, ack.reason) == (AckState.REJECTED, RejectReason.MALFORMED_JSON)
    assert harness.processor.counters == {"malformed_json": 2}
    assert len(_rejections(harness)) == 2
    _assert_nothing_stored(harness)
