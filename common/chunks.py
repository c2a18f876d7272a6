"""Hashing a file the way the chunk protocol needs: whole-file SHA-256 and one per chunk."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FileDigest:
    size: int
    sha256: str
    chunk_sha256: list[str]


def digest_file(path: Path, chunk_size: int) -> FileDigest:
    """Read ``path`` once and return its size, SHA-256 and the SHA-256 of every chunk."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(chunk_size):
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
            size += len(block)
    return FileDigest(size, whole.hexdigest(), chunks)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
