"""The write-once evidence store (DESIGN.md §1 step 6).

Chunks are written at their offsets into a staging file under ``root/.staging`` (the same
filesystem as the clips, so the final move is an atomic rename). ``commit`` makes the file
durable (fsync file, link into place, fsync directories) and never replaces a different file
that already holds that name. ``Store`` is the contract the ingest needs; ``ingest_server.s3_store``
keeps the committed files in an S3 bucket instead, with the same staging.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections import OrderedDict
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Protocol

from common.clock import to_utc
from common.topics import validate_id
from ingest_server.errors import StoreConflict, StoreError

STAGING_DIR = ".staging"
READ_BLOCK = 1024 * 1024
EXTENSIONS = {"video/mp4": ".mp4", "image/jpeg": ".jpg"}


def staging_key(device_id: str, upload_id: str) -> str:
    """The staging file's name for a device's upload: two devices never share one."""
    return hashlib.sha256(f"{device_id}/{upload_id}".encode()).hexdigest()[:48]


def clip_path(
    device_id: str, upload_id: str, cut_start: datetime, content_type: str = "video/mp4"
) -> str:
    """Where a clip lives, relative to the store root: ``clips/{device}/{UTC day}/{upload}.mp4``."""
    day = to_utc(cut_start).strftime("%Y-%m-%d")
    suffix = EXTENSIONS.get(content_type, ".bin")
    return f"clips/{validate_id(device_id)}/{day}/{validate_id(upload_id)}{suffix}"


class Store(Protocol):
    """What the ingest processor needs from an evidence store."""

    def prepare(self, upload_id: str, size: int) -> None:
        """Make sure a staging file for ``upload_id`` exists with room for ``size`` bytes."""

    def write_chunk(self, upload_id: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` of the staging file (not yet durable)."""

    def sync(self, upload_id: str) -> None:
        """Make every write so far to ``upload_id``'s staging file durable."""

    def staging_digest(self, upload_id: str, size: int, chunk_size: int) -> tuple[str, list[str]]:
        """SHA-256 of the first ``size`` staged bytes and of each chunk of them."""

    def committed_sha256(self, relative: str) -> str | None:
        """SHA-256 of the stored file at ``relative``, or None if there is none."""

    def commit(self, upload_id: str, relative_dest: str) -> Path | str:
        """Move the staging file to ``relative_dest`` durably and write-once."""

    def discard(self, upload_id: str) -> None:
        """Forget the staging file of ``upload_id``."""

    def drop_staging(self, upload_id: str) -> bool:
        """Delete the staging file of ``upload_id`` from any thread (the reaper's); return
        whether there was one. Its writer notices when the upload is next loaded."""

    def staging_older_than(self, cutoff: datetime) -> list[str]:
        """Staging files (their upload ids) last written before ``cutoff``."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class EvidenceStore:
    """A filesystem ``Store`` rooted at ``root``; keeps a few staging files open for speed."""

    def __init__(self, root: Path, max_open_files: int = 64) -> None:
        self.root = Path(root).resolve()
        self.staging = self.root / STAGING_DIR
        self.staging.mkdir(parents=True, exist_ok=True)
        self.max_open_files = max_open_files
        # Chunks of one upload arrive back to back: reopening the file for each costs more
        # than the write, so descriptors stay open (LRU-bounded).
        self._fds: OrderedDict[str, int] = OrderedDict()
        # Files created since the staging directory was last fsync'ed (their names are not
        # durable until it is).
        self._new_names: set[str] = set()

    def staging_path(self, upload_id: str) -> Path:
        """The staging file of ``upload_id``."""
        return self.staging / f"{validate_id(upload_id, 'upload id')}.part"

    def local_path(self, relative: str) -> Path:
        """Where a stored file lives (or is cached) on this machine; ``ValueError`` for a
        path that would leave the store."""
        rel = PurePosixPath(relative)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"not a path inside the store: {relative!r}")
        return self.root.joinpath(*rel.parts)

    def path_of(self, relative: str) -> Path:
        """A local file to read the stored file at ``relative`` from (here the file itself;
        a store kept elsewhere fetches it first), refusing paths that leave the store."""
        return self.local_path(relative)

    def put_bytes(self, relative: str, data: bytes) -> Path:
        """Store a small file (a photo) write-once: temp, fsync, link into place, fsync the
        directory. An existing file of that name is kept as it is: names carry the SHA-256."""
        path = self.local_path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            return path
        temp = path.with_name(f".{path.name}.part")
        with temp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(temp, path)  # never replaces an existing file, unlike rename
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return path

    def _fd(self, upload_id: str) -> int:
        fd = self._fds.get(upload_id)
        if fd is not None:
            self._fds.move_to_end(upload_id)
            return fd
        path = self.staging_path(upload_id)
        existed = path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        if not existed:
            self._new_names.add(upload_id)
        self._fds[upload_id] = fd
        while len(self._fds) > self.max_open_files:
            _, old_fd = self._fds.popitem(last=False)
            # Evicted writes must not lose durability: fsync before letting go.
            os.fsync(old_fd)
            os.close(old_fd)
        return fd

    def prepare(self, upload_id: str, size: int) -> None:
        fd = self._fd(upload_id)
        try:
            # Sparse, not zero-filled: ftruncate only reserves the length (cheap, and a lost
            # chunk reads back as zeros, which its hash check catches).
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
        except OSError as exc:
            raise StoreError(f"cannot size staging file for {upload_id}: {exc}") from exc

    def write_chunk(self, upload_id: str, offset: int, data: bytes) -> None:
        fd = self._fd(upload_id)
        try:
            written = os.pwrite(fd, data, offset)
            while written < len(data):
                written += os.pwrite(fd, memoryview(data)[written:], offset + written)
        except OSError as exc:
            raise StoreError(f"cannot write {upload_id}@{offset}: {exc}") from exc

    def sync(self, upload_id: str) -> None:
        fd = self._fds.get(upload_id)
        try:
            if fd is not None:
                os.fdatasync(fd)
            if upload_id in self._new_names:
                _fsync_dir(self.staging)
                self._new_names.discard(upload_id)
        except OSError as exc:
            raise StoreError(f"cannot sync {upload_id}: {exc}") from exc

    def _close(self, upload_id: str) -> None:
        fd = self._fds.pop(upload_id, None)
        if fd is not None:
            os.close(fd)

    def staging_digest(self, upload_id: str, size: int, chunk_size: int) -> tuple[str, list[str]]:
        whole = hashlib.sha256()
        chunks: list[str] = []
        path = self.staging_path(upload_id)
        try:
            with path.open("rb") as fh:
                left = size
                while left > 0:
                    block = fh.read(min(chunk_size, left))
                    if not block:
                        break
                    whole.update(block)
                    chunks.append(hashlib.sha256(block).hexdigest())
                    left -= len(block)
        except FileNotFoundError:
            pass
        return whole.hexdigest(), chunks

    def committed_sha256(self, relative: str) -> str | None:
        path = self.local_path(relative)
        try:
            return _sha256_file(path)
        except FileNotFoundError:
            return None

    def commit(self, upload_id: str, relative_dest: str) -> Path:
        """Make the staging file the stored file at ``relative_dest``; return its path.

        Idempotent: committing again after the staging file is gone, or when an identical
        file is already in place, returns the path. ``StoreConflict`` if a different file is.
        """
        source = self.staging_path(upload_id)
        dest = self.local_path(relative_dest)
        try:
            if not source.exists():
                if dest.exists():
                    return dest
                raise StoreError(f"nothing staged for {upload_id}")
            fd = self._fds.get(upload_id)
            if fd is not None:
                os.fsync(fd)
            else:
                with source.open("rb") as fh:
                    os.fsync(fh.fileno())
            self._close(upload_id)
            created = self._makedirs(dest.parent)
            try:
                # link() refuses to replace an existing name, unlike rename(): write-once even
                # if two workers race to commit the same clip.
                os.link(source, dest)
            except FileExistsError:
                if _sha256_file(dest) != _sha256_file(source):
                    raise StoreConflict(relative_dest) from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    raise
                # A filesystem without hard links: rename is still atomic, checked just above.
                if dest.exists():
                    raise StoreConflict(relative_dest) from None
                os.replace(source, dest)
            _fsync_dir(dest.parent)
            for directory in created:
                _fsync_dir(directory.parent)
            source.unlink(missing_ok=True)
            _fsync_dir(self.staging)
            self._new_names.discard(upload_id)
        except StoreConflict:
            raise
        except OSError as exc:
            raise StoreError(f"cannot commit {upload_id} to {relative_dest}: {exc}") from exc
        return dest

    def _makedirs(self, directory: Path) -> list[Path]:
        """Create ``directory`` and missing parents; return the created ones, deepest first."""
        created: list[Path] = []
        current = directory
        while not current.exists():
            created.append(current)
            current = current.parent
        directory.mkdir(parents=True, exist_ok=True)
        return created

    def discard(self, upload_id: str) -> None:
        self._close(upload_id)
        self._new_names.discard(upload_id)
        self.staging_path(upload_id).unlink(missing_ok=True)

    def drop_staging(self, upload_id: str) -> bool:
        # The path only: open descriptors belong to the ingest thread, which closes its own
        # (``discard``) before it stages that upload again.
        try:
            self.staging_path(upload_id).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot delete staging file of {upload_id}: {exc}") from exc
        return True

    def staging_older_than(self, cutoff: datetime) -> list[str]:
        limit = cutoff.timestamp()
        names: list[str] = []
        with os.scandir(self.staging) as entries:
            for entry in entries:
                if not entry.name.endswith(".part"):
                    continue
                try:
                    if entry.stat().st_mtime < limit:
                        names.append(entry.name.removesuffix(".part"))
                except FileNotFoundError:
                    continue
        return names

    def close(self) -> None:
        """Close every open staging file (their data stays where it is)."""
        for upload_id in list(self._fds):
            self._close(upload_id)
