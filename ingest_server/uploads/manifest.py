"""Manifest authentication, pure: is this ``init`` a manifest its device signed, within limits?

No database and no disk: the caller looks the device up and passes what it found
(``DeviceKey``); every refusal is an ``UploadRejected`` with the reason the device is told.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from common.errors import ProtocolError, SignatureInvalid
from common.schemas import Manifest, RejectReason
from common.signing import SignedManifest, parse_signed_manifest
from ingest_server.errors import UploadRejected


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """What the server knows of a device: its public key (None: not registered) and whether
    it may upload."""

    public_key: str | None
    enabled: bool


@dataclass(frozen=True, slots=True)
class ManifestLimits:
    max_upload_size: int
    max_chunk_size: int


def parse_manifest(upload_id: str, payload: bytes) -> SignedManifest:
    """The signed manifest in an ``init`` payload (not yet verified)."""
    try:
        json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than Python's stack (a hostile init).
        raise UploadRejected(
            RejectReason.MALFORMED_JSON, upload_id, f"init is not JSON: {exc}"
        ) from exc
    try:
        return parse_signed_manifest(payload)
    except ProtocolError as exc:
        raise UploadRejected(RejectReason.INVALID_MANIFEST, upload_id, str(exc)) from exc


def check_names(signed: SignedManifest, upload_id: str) -> None:
    """The manifest names the upload its topic names."""
    manifest = signed.manifest
    if manifest.upload_id != upload_id:
        raise UploadRejected(
            RejectReason.INVALID_MANIFEST,
            upload_id,
            f"topic names upload {upload_id}, manifest {manifest.upload_id}",
        )


def authenticate(
    signed: SignedManifest,
    upload_id: str,
    device_id: str,
    device: DeviceKey,
    limits: ManifestLimits,
) -> Manifest:
    """The manifest, once it is known to come from ``device_id``, registered and enabled, under
    its key, and within ``limits``; ``UploadRejected`` otherwise."""
    manifest = signed.manifest
    # Both can pass (a camera installed before it is registered; a device re-enabled):
    # the device keeps the clip and tries again later.
    if device.public_key is None:
        raise UploadRejected(
            RejectReason.UNKNOWN_DEVICE, upload_id, f"device {device_id} is not registered"
        )
    if not device.enabled:
        raise UploadRejected(
            RejectReason.DEVICE_DISABLED, upload_id, f"device {device_id} is disabled"
        )
    if manifest.device_id != device_id:
        raise UploadRejected(
            RejectReason.DEVICE_MISMATCH,
            upload_id,
            f"{device_id} sent a manifest of {manifest.device_id}",
        )
    try:
        signed.verify(device.public_key)
    except SignatureInvalid as exc:
        raise UploadRejected(RejectReason.SIGNATURE_INVALID, upload_id, str(exc)) from exc
    if manifest.size > limits.max_upload_size:
        raise UploadRejected(
            RejectReason.INVALID_MANIFEST,
            upload_id,
            f"size {manifest.size} exceeds {limits.max_upload_size}",
        )
    if manifest.chunk_size > limits.max_chunk_size:
        raise UploadRejected(
            RejectReason.INVALID_MANIFEST,
            upload_id,
            f"chunk_size {manifest.chunk_size} exceeds {limits.max_chunk_size}",
        )
    return manifest


def same_manifest(stored_payload: str, signed: SignedManifest, upload_id: str) -> None:
    """An upload id announced again must carry the very manifest it was first announced with."""
    stored = parse_signed_manifest(stored_payload.encode())
    if stored.signed_bytes != signed.signed_bytes:
        raise UploadRejected(
            RejectReason.UPLOAD_CONFLICT,
            upload_id,
            "upload id already used for a different manifest",
        )
