"""Uploads belong to their device: another device taking an upload id first, or one badly
signed ``init`` under a stored clip's id, changes nothing for the rightful device."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import Harness, TestUpload, make_upload
from sqlalchemy import select

from common.schemas import AckReplyTo, AckState, RejectReason
from common.signing import generate_private_key
from ingest_server.models import Clip, ClipCheck, Upload, UploadState


def _complete(harness: Harness, upload: TestUpload) -> list:
    harness.send(upload.init_topic(), upload.init_payload)
    harness.send_chunks(upload)
    return harness.send(upload.fin_topic(), upload.fin_payload())


def test_another_device_taking_the_upload_id_first_does_not_block_the_owner(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    neighbour_key = generate_private_key()
    harness.register("dev-next-door", neighbour_key)
    # The neighbour knows (or guesses) the id the camera will use, and uploads first under it.
    squatter = make_upload(tmp_path / "n", neighbour_key, "dev-next-door", "cut-id-of-dev-1")
    [ack] = _complete(harness, squatter)
    assert ack.state is AckState.COMPLETE
    # The rightful camera's upload under the same id is a new upload of its own.
    own = make_upload(tmp_path / "o", key, "dev-1", "cut-id-of-dev-1")
    init = harness.send(own.init_topic(), own.init_payload)
    assert [(a.state, a.reply_to, a.missing) for a in init] == [
        (AckState.MISSING, AckReplyTo.INIT, [(0, own.manifest.size)])
    ]
    harness.send_chunks(own)
    [fin] = harness.send(own.fin_topic(), own.fin_payload())
    assert fin.state is AckState.COMPLETE
    with harness.sessions() as db:
        clips = {c.device_id: c.sha256 for c in db.scalars(select(Clip))}
    assert clips == {"dev-1": own.manifest.sha256, "dev-next-door": squatter.manifest.sha256}


def test_a_badly_signed_init_does_not_spoil_a_stored_clip(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    upload = make_upload(tmp_path / "o", key, "dev-1", "up-1")
    [ack] = _complete(harness, upload)
    assert ack.state is AckState.COMPLETE
    # The same id, a manifest signed with the wrong key (an attacker, or a rotated key).
    forged = make_upload(tmp_path / "f", generate_private_key(), "dev-1", "up-1")
    [refusal] = harness.send(forged.init_topic(), forged.init_payload)
    assert (refusal.state, refusal.reason) == (AckState.REJECTED, RejectReason.SIGNATURE_INVALID)
    with harness.sessions() as db:
        row = db.get(Upload, ("up-1", "dev-1"))
        clip = db.scalars(select(Clip)).one()
    assert row is not None and row.state == UploadState.COMPLETE.value
    assert clip.sha256 == upload.manifest.sha256
    # The owner asking again is still told its clip is complete.
    [again] = harness.send(upload.init_topic(), upload.init_payload)
    assert again.state is AckState.COMPLETE


def test_a_disabled_device_is_told_so_and_may_try_later(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    from ingest_server.models import Device

    with harness.sessions.begin() as db:
        device = db.get(Device, "dev-1")
        assert device is not None
        device.enabled = False
    upload = make_upload(tmp_path / "o", key, "dev-1", "up-1")
    [ack] = harness.send(upload.init_topic(), upload.init_payload)
    assert (ack.state, ack.reason) == (AckState.REJECTED, RejectReason.DEVICE_DISABLED)
    with harness.sessions.begin() as db:
        device = db.get(Device, "dev-1")
        assert device is not None
        device.enabled = True
    [ack] = _complete(harness, upload)
    assert ack.state is AckState.COMPLETE


def test_a_stored_clip_and_its_pending_check_are_one_transaction(
    harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """Nobody is told of the clip (no checker runs here: a crash right after the commit);
    its check is queued in the database all the same."""
    upload = make_upload(tmp_path / "o", key, "dev-1", "up-1")
    [ack] = _complete(harness, upload)
    assert ack.state is AckState.COMPLETE
    with harness.sessions() as db:
        clip = db.scalars(select(Clip)).one()
        check = db.get(ClipCheck, clip.id)
    assert check is not None and check.checked_at is None and check.attempts == 0
