"""Which evidence store a server runs on: the filesystem (``store.EvidenceStore``) or an S3
bucket with Object Lock (``s3_store.S3EvidenceStore``), as its settings say. Kept apart from
both so that neither imports the other's module back."""

from __future__ import annotations

from ingest_server.settings import Settings
from ingest_server.store import EvidenceStore


def open_store(settings: Settings) -> EvidenceStore:
    """The evidence store the settings ask for: the filesystem, or an S3 bucket with Object
    Lock (``StoreError`` if that bucket has no Object Lock)."""
    if settings.evidence_store == "s3":
        # Imported here: boto3 costs its import time only where the S3 store is used.
        from ingest_server.s3_store import S3EvidenceStore

        return S3EvidenceStore.from_settings(settings)
    return EvidenceStore(settings.evidence_dir)
