"""The filesystem evidence store: chunks at offsets, durable atomic commit, write-once."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest_server.errors import StoreConflict
from ingest_server.store import EvidenceStore, clip_path


def test_chunks_land_at_their_offsets_and_commit_moves_atomically(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "ev")
    store.prepare("u1", 10)
    store.write_chunk("u1", 6, b"6789")
    store.write_chunk("u1", 0, b"012345")
    store.sync("u1")
    whole, chunks = store.staging_digest("u1", 10, 6)
    assert whole == hashlib.sha256(b"0123456789").hexdigest()
    assert chunks == [hashlib.sha256(b"012345").hexdigest(), hashlib.sha256(b"6789").hexdigest()]
    dest = store.commit("u1", "clips/d/2026-01-01/u1.mp4")
    assert dest.read_bytes() == b"0123456789"
    assert not store.staging_path("u1").exists()
    assert store.committed_sha256("clips/d/2026-01-01/u1.mp4") == whole
    assert store.commit("u1", "clips/d/2026-01-01/u1.mp4") == dest  # idempotent


def test_commit_never_overwrites_a_different_file(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "ev")
    existing = store.path_of("clips/d/2026-01-01/u1.mp4")
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"original evidence")
    store.write_chunk("u1", 0, b"something else")
    with pytest.raises(StoreConflict):
        store.commit("u1", "clips/d/2026-01-01/u1.mp4")
    assert existing.read_bytes() == b"original evidence"
    # The same bytes again are fine (a retried commit after a crash).
    store.discard("u1")
    store.write_chunk("u1", 0, b"original evidence")
    assert store.commit("u1", "clips/d/2026-01-01/u1.mp4") == existing


def test_paths_stay_inside_the_store(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "ev")
    for bad in ("../x", "/etc/passwd", "clips/../../x"):
        with pytest.raises(ValueError):
            store.path_of(bad)
    with pytest.raises(ValueError):
        store.staging_path("../x")


def test_layout_uses_the_utc_day_of_the_cut() -> None:
    late_in_shanghai = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)
    assert clip_path("dev-1", "up-1", late_in_shanghai) == "clips/dev-1/2026-03-02/up-1.mp4"
    assert clip_path("dev-1", "up-2", late_in_shanghai, "image/jpeg").endswith("up-2.jpg")


def test_many_open_uploads_stay_correct_past_the_descriptor_cap(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "ev", max_open_files=2)
    for i in range(5):
        store.write_chunk(f"u{i}", 0, bytes([i]) * 3)
    for i in range(5):
        store.write_chunk(f"u{i}", 3, bytes([i]) * 3)
        store.sync(f"u{i}")
    for i in range(5):
        assert store.staging_path(f"u{i}").read_bytes() == bytes([i]) * 6
