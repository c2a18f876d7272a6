"""Ed25519 signing of manifests (DESIGN.md §1 step 4).

The signature covers the canonical JSON of the manifest object as sent, minus its
``signature`` field, so the server verifies exactly the bytes the device meant, independent of
how either side's pydantic serialises dates.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from common.errors import ProtocolError, SignatureInvalid
from common.schemas import Manifest, canonical_json


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM (PKCS#8) Ed25519 private key from ``path``."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64: what is registered on the server for a device."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_public_key_b64(value: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("public key is not valid base64") from exc
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign_manifest(manifest: Manifest, key: Ed25519PrivateKey) -> bytes:
    """The payload to publish on ``file/{id}/init``: the manifest JSON plus its signature."""
    body = manifest.model_dump(mode="json")
    signature = key.sign(canonical_json(body))
    body["signature"] = base64.b64encode(signature).decode()
    return canonical_json(body)


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """A manifest parsed off the wire, not yet verified."""

    manifest: Manifest
    signed_bytes: bytes
    signature: bytes

    def verify(self, public_key: Ed25519PublicKey | str) -> None:
        """Raise ``SignatureInvalid`` unless the signature is the device's."""
        key = load_public_key_b64(public_key) if isinstance(public_key, str) else public_key
        try:
            key.verify(self.signature, self.signed_bytes)
        except InvalidSignature as exc:
            raise SignatureInvalid(
                f"manifest {self.manifest.upload_id} is not signed by device "
                f"{self.manifest.device_id}'s key"
            ) from exc


def parse_signed_manifest(payload: bytes) -> SignedManifest:
    """Parse an ``init`` payload; ``ProtocolError`` for bad JSON, fields or signature encoding."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON manifest: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("manifest is not a JSON object")
    raw_signature = body.pop("signature", None)
    if not isinstance(raw_signature, str):
        raise ProtocolError("manifest has no signature")
    try:
        signature = base64.b64decode(raw_signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("manifest signature is not base64") from exc
    try:
        manifest = Manifest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ProtocolError(f"invalid manifest: {where}: {first['msg']}") from exc
    return SignedManifest(manifest, canonical_json(body), signature)
