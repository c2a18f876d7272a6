"""The same processor against PostgreSQL: the production database behaves like SQLite."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import Harness, make_upload, stored_files
from sqlalchemy import select

from common.schemas import AckState, RejectReason
from common.signing import generate_private_key
from ingest_server.models import Clip, Rejection, Upload


def test_happy_path_on_postgresql(
    pg_harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    upload = make_upload(tmp_path / "d", key, "dev-1", "up-pg", size=3 * 4096 + 1)
    acks = pg_harness.upload(upload)
    assert [a.state for a in acks] == [AckState.MISSING, AckState.COMPLETE]
    stored = pg_harness.store.root / "clips/dev-1/2026-03-02/up-pg.mp4"
    assert stored.read_bytes() == upload.data
    with pg_harness.sessions() as session:
        clip = session.scalars(select(Clip)).one()
        row = session.get(Upload, ("up-pg", "dev-1"))
    assert clip.sha256 == upload.manifest.sha256
    assert clip.cut_start == upload.manifest.cut_start  # timezone-aware round trip
    assert row is not None and row.state == "complete" and row.chunks_received == 4
    # A restarted server still knows the upload is done.
    pg_harness.restart()
    [ack] = pg_harness.send(upload.init_topic(), upload.init_payload)
    assert ack.state is AckState.COMPLETE


def test_rejection_is_logged_on_postgresql(pg_harness: Harness, tmp_path: Path) -> None:
    upload = make_upload(tmp_path / "d", generate_private_key(), "dev-1", "up-forged")
    [ack] = pg_harness.send(upload.init_topic(), upload.init_payload)
    assert (ack.state, ack.reason) == (AckState.REJECTED, RejectReason.SIGNATURE_INVALID)
    with pg_harness.sessions() as session:
        reasons = session.scalars(select(Rejection.reason)).all()
    assert reasons == ["signature_invalid"]
    assert pg_harness.processor.counters == {"signature_invalid": 1}
    assert stored_files(pg_harness.store.root) == []
