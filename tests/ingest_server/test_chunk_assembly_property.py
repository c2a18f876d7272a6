"""Chunk assembly as a property (issue 8, item 9): whatever the order, the duplicates, the bad
and partial sends, the restarts and the bytes rotting on disk, the real processor on a real
SQLite file and store completes an upload iff every byte is present and the whole file's hash
matches the signed manifest, and then stores exactly the device's bytes, once."""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_helpers import START, Harness
from sqlalchemy import func, select

from common import topics
from common.ranges import Range, merge, missing_ranges
from common.schemas import Ack, AckReplyTo, AckState, Fin, Manifest, RejectReason
from common.signing import sign_manifest
from ingest_server.models import Clip, Upload
from ingest_server.store import clip_path

DEVICE = "dev-1"
_ids = itertools.count()


@dataclass
class Clipfile:
    """A device's file and what it signs about it (``lie``: a whole-file hash that the chunks
    contradict, as a broken or hostile device could sign)."""

    upload_id: str
    data: bytes
    chunk_size: int
    manifest: Manifest
    init: bytes
    lie: bool

    @property
    def count(self) -> int:
        return len(self.manifest.chunk_sha256)

    def span(self, index: int) -> Range:
        start = index * self.chunk_size
        return (start, min(start + self.chunk_size, len(self.data)))

    def chunk(self, index: int) -> bytes:
        start, end = self.span(index)
        return self.data[start:end]

    def fin(self, **changes: Any) -> bytes:
        fields: dict[str, Any] = {
            "upload_id": self.upload_id,
            "size": len(self.data),
            "sha256": self.manifest.sha256,
        }
        fields.update(changes)
        return Fin(**fields).to_bytes()


def clipfile(key: Ed25519PrivateKey, size: int, chunk_size: int, seed: int, lie: bool) -> Clipfile:
    data = random.Random(seed).randbytes(size)
    chunks = [data[o : o + chunk_size] for o in range(0, size, chunk_size)]
    whole = hashlib.sha256(data).hexdigest()
    manifest = Manifest(
        upload_id=f"up-{next(_ids)}",
        device_id=DEVICE,
        session_id="sess-1",
        cut_start=START,
        cut_end=START + timedelta(seconds=60),
        size=size,
        sha256=hashlib.sha256(whole.encode()).hexdigest() if lie else whole,
        chunk_size=chunk_size,
        chunk_sha256=[hashlib.sha256(c).hexdigest() for c in chunks],
        duration_s=60.0,
        frames=900,
        width=1280,
        height=720,
        created_at=START + timedelta(seconds=70),
    )
    init = sign_manifest(manifest, key)
    return Clipfile(manifest.upload_id, data, chunk_size, manifest, init, lie)


# One step of a transfer. ``chunk`` variants: the right bytes, the right length with a flipped
# byte, one byte short, one byte long.
Step = tuple[str, int, str]


def steps(count: int) -> st.SearchStrategy[list[Step]]:
    index = st.integers(0, count - 1)
    one = st.one_of(
        st.tuples(st.just("chunk"), index, st.just("good")),
        st.tuples(st.just("chunk"), index, st.sampled_from(["flipped", "short", "long"])),
        st.tuples(st.just("offset"), st.integers(-5, 10**6), st.just("")),
        st.tuples(st.sampled_from(["flush", "restart", "fin", "init"]), st.just(0), st.just("")),
        st.tuples(st.just("rot"), index, st.just("")),
    )
    return st.lists(one, max_size=40)


@dataclass
class Model:
    """What must be true of the server, from the steps alone."""

    clip: Clipfile
    written: set[int] = field(default_factory=set)  # in the staging file, not yet durable
    durable: set[int] = field(default_factory=set)  # fsync'ed and in the database
    rotten: set[int] = field(default_factory=set)  # staged bytes that went bad on disk
    refusals: int = 0
    final: AckState | None = None

    def missing(self) -> list[Range]:
        return merge(self.clip.span(i) for i in range(self.clip.count) if i not in self.durable)

    def flush(self) -> None:
        self.durable |= self.written
        self.written = set()


def fin_and_check(harness: Harness, model: Model) -> Ack:
    """Send fin; check the answer against the model and update it."""
    clip = model.clip
    if model.final is not None:
        acks = harness.send(topics.file_fin(DEVICE, clip.upload_id), clip.fin())
        # Chunk complaints held for this flush come first (a late chunk with no offset).
        answer = [a for a in acks if a.reply_to is AckReplyTo.FIN]
        assert [a.state for a in answer] == [model.final], acks
        return answer[-1]
    model.flush()
    acks = harness.send(topics.file_fin(DEVICE, clip.upload_id), clip.fin())
    answer = [a for a in acks if a.reply_to is AckReplyTo.FIN]
    assert len(answer) == 1, acks
    ack = answer[0]
    if len(model.durable) < clip.count:
        assert (ack.state, ack.missing) == (AckState.MISSING, model.missing())
    elif model.rotten:
        # Every byte was there but some went bad on disk: exactly those chunks are asked for.
        model.durable -= model.rotten
        model.rotten = set()
        model.refusals += 1
        assert (ack.state, ack.reason) == (AckState.MISSING, RejectReason.HASH_MISMATCH)
        assert ack.missing == model.missing()
    elif clip.lie:
        model.refusals += 1
        model.final = AckState.REJECTED
        assert (ack.state, ack.reason) == (AckState.REJECTED, RejectReason.HASH_MISMATCH)
    else:
        model.final = AckState.COMPLETE
        assert ack.state is AckState.COMPLETE and ack.missing == []
    return ack


def run_step(harness: Harness, model: Model, step: Step) -> None:
    kind, number, variant = step
    clip = model.clip
    if kind == "chunk":
        data = clip.chunk(number)
        if variant == "flipped":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        elif variant == "short":
            data = data[:-1]
        elif variant == "long":
            data = data + b"\0"
        harness.send(topics.file_chunk(DEVICE, clip.upload_id, clip.span(number)[0]), data)
        if model.final is not None:
            if model.final is AckState.REJECTED:
                model.refusals += 1  # a chunk of a rejected upload is refused
            return
        if variant != "good":
            model.refusals += 1
        elif number not in model.written | model.durable:
            model.written.add(number)
            model.rotten.discard(number)
    elif kind == "offset":
        # Anything that is not the start of a chunk: refused, counted, never stored.
        offset = number if number % clip.chunk_size else number + 1
        if 0 <= offset < len(clip.data) and offset % clip.chunk_size == 0:
            offset += 1
        topic = f"{topics.UP}/{DEVICE}/file/{clip.upload_id}/chunk/{offset}"
        harness.send(topic, clip.chunk(0))
        # A negative offset is no topic at all; a finished upload ignores late chunks unread.
        if number < 0 or model.final is not AckState.COMPLETE:
            model.refusals += 1
    elif kind == "flush":
        harness.flush()
        if model.final is None:
            model.flush()
    elif kind == "restart":
        # What was written but not flushed was never durable: the device is asked again.
        assert_counted(harness, model)
        harness.restart()
        model.written = set()
        model.refusals = 0
    elif kind == "init":
        acks = harness.send(topics.file_init(DEVICE, clip.upload_id), clip.init)
        if model.final is None:
            model.flush()
            assert [(a.state, a.missing) for a in acks if a.reply_to is AckReplyTo.INIT] == [
                (AckState.MISSING, model.missing())
            ]
        else:
            assert [a.state for a in acks if a.reply_to is AckReplyTo.INIT] == [model.final]
    elif kind == "rot":
        # Staged bytes gone bad after their check: a staging file holds every chunk written,
        # the database only the committed ones.
        stored = model.durable
        if harness.settings.staging == "local":
            stored = model.written | model.durable
        if number in stored and number not in model.rotten and model.final is None:
            harness.spoil_staged(DEVICE, clip.upload_id, clip.span(number)[0])
            model.rotten.add(number)
    elif kind == "fin":
        fin_and_check(harness, model)


def assert_counted(harness: Harness, model: Model) -> None:
    """Every refused message was counted by this processor, and nothing else was."""
    counters = harness.processor.counters
    assert sum(counters.values()) == model.refusals, counters


def assert_stored_state(harness: Harness, model: Model) -> None:
    clip = model.clip
    manifest = clip.manifest
    relative = clip_path(DEVICE, clip.upload_id, manifest.cut_start, manifest.content_type)
    committed = harness.store.root / relative
    with harness.sessions() as db:
        row = db.get(Upload, (clip.upload_id, DEVICE))
        clips = db.scalar(
            select(func.count()).select_from(Clip).where(Clip.upload_id == clip.upload_id)
        )
    assert row is not None
    if model.final is AckState.COMPLETE:
        assert row.state == "complete" and clips == 1
        assert committed.read_bytes() == clip.data
    else:
        assert clips == 0 and not committed.exists()
        assert row.state == ("rejected" if model.final is AckState.REJECTED else "receiving")
        if model.final is None:
            assert missing_ranges(row.ranges, len(clip.data)) == model.missing()


@pytest.fixture(params=["local", "database"])
def shared_harness(
    request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> Any:  # one database for every example: each example uploads under a new id
    h = Harness(sqlite_url, tmp_path / "evidence", staging=request.param)
    h.register(DEVICE, key)
    try:
        yield h
    finally:
        h.close()


@settings(max_examples=examples(60))
@given(
    st.integers(1, 5).flatmap(
        lambda count: st.tuples(
            st.just(count),
            st.sampled_from([16, 64, 100]),
            st.integers(0, 15),
            st.booleans(),
            st.integers(0, 2**32),
            steps(count),
        )
    )
)
def test_complete_iff_every_byte_present_and_the_hash_matches(
    shared_harness: Harness, key: Ed25519PrivateKey, case: tuple[int, int, int, bool, int, list]
) -> None:
    count, chunk_size, short_by, lie, seed, plan = case
    size = max(1, count * chunk_size - short_by)
    clip = clipfile(key, size, chunk_size, seed, lie=lie and seed % 4 == 0)
    model = Model(clip)
    harness = shared_harness
    harness.restart()  # a processor of its own: counters start at zero
    acks = harness.send(topics.file_init(DEVICE, clip.upload_id), clip.init)
    assert [(a.state, a.missing) for a in acks] == [(AckState.MISSING, [(0, size)])]
    for step in plan:
        run_step(harness, model, step)
    fin_and_check(harness, model)
    assert_stored_state(harness, model)
    # Liveness: sending whatever is still missing, in order, then fin, finishes the upload
    # (as complete unless the manifest lies, or rotten bytes are asked for once more).
    for _ in range(2):
        if model.final is not None:
            break
        for index in range(clip.count):
            run_step(harness, model, ("chunk", index, "good"))
        fin_and_check(harness, model)
    assert model.final is (AckState.REJECTED if clip.lie else AckState.COMPLETE)
    assert_stored_state(harness, model)
    assert_counted(harness, model)
