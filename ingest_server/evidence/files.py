"""Where a clip's or photo's stored file is, and what it is."""

from __future__ import annotations

from pathlib import Path

from ingest_server.models import Clip, Photo
from ingest_server.store import EvidenceStore


def clip_media_type(clip: Clip) -> str:
    """The clip's content type: an MP4, or a JPEG for a snapshot or reference still."""
    return "image/jpeg" if clip.path.lower().endswith((".jpg", ".jpeg")) else "video/mp4"


def clip_file(store: EvidenceStore, clip: Clip) -> Path:
    """The stored file of ``clip``; ``ValueError`` if its path would leave the store."""
    return store.path_of(clip.path)


def photo_file(store: EvidenceStore, photo: Photo) -> Path:
    """The stored JPEG of ``photo``; ``ValueError`` if its path would leave the store."""
    return store.path_of(photo.path)
