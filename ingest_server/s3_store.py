"""The evidence store kept in an S3-compatible bucket with Object Lock (docs/storage.md).

Chunks are still staged on local disk, exactly as in ``EvidenceStore``: S3 has no write at an
offset, chunks arrive out of order and are re-sent, and a multipart upload's parts must be at
least 5 MiB and cannot be hashed per chunk by the server. Once the staged file has passed its
SHA-256 and signature checks, ``commit`` moves it into place locally (write-once, as before) and
then puts it to the bucket in one request with:

- ``x-amz-checksum-sha256``: the bucket refuses bytes that do not hash to the file's SHA-256;
- ``If-None-Match: *``: the put never replaces an object already under that key;
- Object Lock (COMPLIANCE or GOVERNANCE) until now + the retention days: nobody, this server
  included, can delete or overwrite that version before then.

The bucket is versioned (Object Lock requires it), so an object's *first* version is the
evidence: a later put by anyone holding write credentials only adds a newer version, and a
delete only adds a delete marker, neither of which this store reads. ``committed_sha256`` and
reads always go to that first version.

Reads go through a local cache: ``path_of`` returns the local file, fetching the first version
into ``evidence_dir`` when it is not there yet (checked against its SHA-256 before it is kept).
Every reader (the clip checks' PyAV, the API's ranged ``FileResponse``, the export's zip) then
works on an ordinary file, unchanged. A cached file may be deleted at any time; it is fetched
again when next read (``prune_cache``, ``classcam-server s3-bucket --prune-cache-days``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ingest_server.errors import StoreConflict, StoreError
from ingest_server.settings import Settings
from ingest_server.store import READ_BLOCK, STAGING_DIR, EvidenceStore, _fsync_dir

LockMode = Literal["COMPLIANCE", "GOVERNANCE"]
CONTENT_TYPES = {".mp4": "video/mp4", ".jpg": "image/jpeg"}
# What a refused conditional put answers: 412 on AWS and SeaweedFS; 409 when two puts race.
_ALREADY_THERE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING = {"NoSuchKey", "NoSuchVersion", "404", "NotFound"}


@dataclass(frozen=True)
class StoredVersion:
    """The first (evidence) version of an object: its id, SHA-256 (hex) and lock."""

    version_id: str
    sha256: str | None
    lock_mode: str | None
    retain_until: datetime | None


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _hex_from_checksum(value: str | None) -> str | None:
    if not value or "-" in value:  # "-N": a multipart composite, not the file's own hash
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None


def _sha256_of(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(READ_BLOCK):
            digest.update(block)
    return digest.digest()


def make_client(settings: Settings) -> Any:
    """A boto3 S3 client for the settings' endpoint and region; credentials come from the
    standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance
    role), never from classcam's own settings."""
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        # Path-style: SeaweedFS, MinIO and most on-premises stores have no per-bucket DNS.
        s3={"addressing_style": "path"},
    )
    session = boto3.session.Session()
    return session.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region, config=config
    )


def create_locked_bucket(client: Any, bucket: str, mode: LockMode, days: int) -> bool:
    """Create ``bucket`` with Object Lock on and a default retention of ``mode`` for ``days``
    (a safety net: the store sets each object's lock itself); return False if it already
    existed. Object Lock can only be switched on when a bucket is created."""
    try:
        client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        created = True
    except ClientError as exc:
        if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise StoreError(f"cannot create bucket {bucket}: {exc}") from exc
        created = False
    check_locked_bucket(client, bucket)
    if created:
        client.put_object_lock_configuration(
            Bucket=bucket,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}},
            },
        )
    return created


def check_locked_bucket(client: Any, bucket: str) -> None:
    """``StoreError`` unless ``bucket`` exists with Object Lock enabled: evidence is never
    written where it could be deleted."""
    try:
        config = client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        code = _error_code(exc)
        if code == "ObjectLockConfigurationNotFoundError":
            raise StoreError(
                f"bucket {bucket} has no Object Lock; evidence needs a bucket created with it"
                " (classcam-server s3-bucket)"
            ) from exc
        if code == "NoSuchBucket":
            raise StoreError(
                f"bucket {bucket} does not exist; create it with Object Lock"
                " (classcam-server s3-bucket)"
            ) from exc
        raise StoreError(f"cannot read bucket {bucket}'s Object Lock: {code or exc}") from exc
    except BotoCoreError as exc:
        raise StoreError(f"cannot reach the evidence bucket {bucket}: {exc}") from exc
    if config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        raise StoreError(f"bucket {bucket} has Object Lock switched off")


class S3EvidenceStore(EvidenceStore):
    """An ``EvidenceStore`` whose committed files live, locked, in an S3 bucket; the local
    ``root`` holds the staging files and a cache of what was committed or read here."""

    def __init__(
        self,
        root: Path,
        client: Any,
        bucket: str,
        lock_mode: LockMode = "COMPLIANCE",
        retention_days: int = 1095,
        max_open_files: int = 64,
    ) -> None:
        super().__init__(root, max_open_files)
        self.client = client
        self.bucket = bucket
        self.lock_mode: LockMode = lock_mode
        self.retention = timedelta(days=retention_days)
        # Refuse to run at all on a bucket where evidence could be deleted.
        check_locked_bucket(client, bucket)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3EvidenceStore:
        """The store the settings describe (``evidence_store = "s3"``)."""
        return cls(
            settings.evidence_dir,
            make_client(settings),
            settings.s3_bucket,
            settings.s3_lock_mode,
            settings.s3_retention_days,
        )

    def key_of(self, relative: str) -> str:
        """The object key of a stored file (its store-relative path, checked)."""
        self.local_path(relative)  # ValueError for a path that would leave the store
        return str(PurePosixPath(relative))

    def original_version(self, relative: str) -> StoredVersion | None:
        """The first version ever written under ``relative`` (the evidence), or None."""
        key = self.key_of(relative)
        first: dict[str, Any] | None = None
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=key
            )
            for page in pages:
                for version in page.get("Versions", []):
                    # Newest first within a key: the last one seen is the oldest.
                    if version["Key"] == key:
                        first = version
            if first is None:
                return None
            head = self.client.head_object(
                Bucket=self.bucket, Key=key, VersionId=first["VersionId"], ChecksumMode="ENABLED"
            )
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return None
            raise StoreError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"cannot reach s3://{self.bucket}/{key}: {exc}") from exc
        # The server's own checksum first: the metadata is only what the writer claimed.
        sha = _hex_from_checksum(head.get("ChecksumSHA256")) or head.get("Metadata", {}).get(
            "sha256"
        )
        return StoredVersion(
            version_id=first["VersionId"],
            sha256=sha,
            lock_mode=head.get("ObjectLockMode"),
            retain_until=head.get("ObjectLockRetainUntilDate"),
        )

    def committed_sha256(self, relative: str) -> str | None:
        """SHA-256 of the object's first version; None if there is none.

        A file already at ``relative`` locally with nothing in the bucket is a commit that a
        crash cut between the local move and the put (only a verified commit or a fetch from
        the bucket puts a file there): the put is finished now, so the ingest's retried
        ``fin`` finds the clip stored instead of asking the device for every chunk again.
        """
        stored = self.original_version(relative)
        if stored is None:
            local = self.local_path(relative)
            if not local.is_file():
                return None
            self._put_locked(relative, local, None)
            stored = self.original_version(relative)
            if stored is None:
                raise StoreError(f"s3://{self.bucket}/{self.key_of(relative)} not there after put")
        # "" for an object whose hash we cannot tell: never equal to a manifest's, so the
        # ingest commits again and the commit fails as a conflict instead of trusting it.
        return stored.sha256 or ""

    def commit(self, upload_id: str, relative_dest: str) -> Path:
        """Commit locally (write-once), then put the file to the bucket, locked.

        Idempotent: after a crash at any point, committing again finds the local file and/or
        the object and finishes the rest; an object already there with other bytes is a
        ``StoreConflict``, never a second version.
        """
        stored = self.original_version(relative_dest)
        local = self.local_path(relative_dest)
        staged = self.staging_path(upload_id).exists()
        if stored is not None and not staged and not local.exists():
            # Already in the bucket (another worker, or before a crash): nothing left to move.
            return local
        local = super().commit(upload_id, relative_dest)
        self._put_locked(relative_dest, local, stored)
        return local

    def put_bytes(self, relative: str, data: bytes) -> Path:
        """Store a small file (a photo) locally and in the bucket, locked, write-once."""
        local = super().put_bytes(relative, data)
        self._put_locked(relative, local, self.original_version(relative))
        return local

    def _put_locked(self, relative: str, local: Path, stored: StoredVersion | None) -> None:
        digest = _sha256_of(local)
        if stored is not None:
            self._same_or_conflict(relative, stored, digest)
            return
        key = self.key_of(relative)
        # Wall time, never the injected (possibly simulated) clock: the bucket enforces the
        # lock against its own real clock.
        until = datetime.now(UTC) + self.retention
        try:
            with local.open("rb") as body:
                response = self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType=CONTENT_TYPES.get(local.suffix, "application/octet-stream"),
                    ChecksumSHA256=base64.b64encode(digest).decode(),
                    Metadata={"sha256": digest.hex()},
                    ObjectLockMode=self.lock_mode,
                    ObjectLockRetainUntilDate=until,
                    IfNoneMatch="*",
                )
        except ClientError as exc:
            if _error_code(exc) not in _ALREADY_THERE:
                raise StoreError(f"cannot put s3://{self.bucket}/{key}: {exc}") from exc
            # Someone committed the same key between our look and our put.
            again = self.original_version(relative)
            if again is None:
                raise StoreError(f"s3://{self.bucket}/{key} refused and not there") from exc
            self._same_or_conflict(relative, again, digest)
            return
        except BotoCoreError as exc:
            raise StoreError(f"cannot reach s3://{self.bucket}/{key}: {exc}") from exc
        if _hex_from_checksum(response.get("ChecksumSHA256")) not in (None, digest.hex()):
            raise StoreError(f"s3://{self.bucket}/{key} stored a different SHA-256")

    def _same_or_conflict(self, relative: str, stored: StoredVersion, digest: bytes) -> None:
        if stored.sha256 != digest.hex():
            raise StoreConflict(f"s3://{self.bucket}/{self.key_of(relative)}")

    def _local_files(self) -> Iterator[tuple[str, Path]]:
        """Committed or cached files on local disk (relative path, path): not staging, nor
        the temp files of a put or fetch under way."""
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root)
            if relative.parts[0] == STAGING_DIR or path.name.startswith("."):
                continue
            if path.is_file():
                yield relative.as_posix(), path

    def upload_local(self) -> tuple[int, int]:
        """Put, locked, every local file the bucket lacks (moving an ``fs`` store's files into
        the bucket, or finishing puts a crash cut off); return (put, already there).
        ``StoreConflict`` for a local file that differs from the bucket's."""
        put = present = 0
        for relative, path in self._local_files():
            stored = self.original_version(relative)
            self._put_locked(relative, path, stored)
            if stored is None:
                put += 1
            else:
                present += 1
        return put, present

    def prune_cache(self, older_than: datetime) -> tuple[int, int]:
        """Delete cached files last read or written before ``older_than`` whose bucket copy
        is confirmed (same SHA-256); return (deleted, kept because the bucket lacks them).
        Staging files are never touched; a deleted file is fetched again when next read."""
        limit = older_than.timestamp()
        deleted = kept = 0
        for relative, path in self._local_files():
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            if max(info.st_atime, info.st_mtime) >= limit:
                continue
            stored = self.original_version(relative)
            if stored is None or stored.sha256 != _sha256_of(path).hex():
                # Never delete the only copy: a commit whose put has not happened yet.
                kept += 1
                continue
            path.unlink(missing_ok=True)
            deleted += 1
        return deleted, kept

    def path_of(self, relative: str) -> Path:
        """The local copy of the stored file, fetched from the bucket's first version into the
        cache if it is not here yet; a path that does not exist if the bucket has no such
        object (callers treat it as a missing file)."""
        local = self.local_path(relative)
        if local.is_file():
            return local
        stored = self.original_version(relative)
        if stored is None:
            return local
        self._fetch(relative, stored, local)
        return local

    def _fetch(self, relative: str, stored: StoredVersion, local: Path) -> None:
        key = self.key_of(relative)
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{local.name}.", suffix=".fetch", dir=local.parent
        )
        temp = Path(temp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                response = self.client.get_object(
                    Bucket=self.bucket, Key=key, VersionId=stored.version_id
                )
                for block in response["Body"].iter_chunks(READ_BLOCK):
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != stored.sha256:
                raise StoreError(f"s3://{self.bucket}/{key} does not match its SHA-256")
            with contextlib.suppress(FileExistsError):  # a concurrent fetch may have won
                os.link(temp, local)
            _fsync_dir(local.parent)
        except ClientError as exc:
            raise StoreError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"cannot reach s3://{self.bucket}/{key}: {exc}") from exc
        finally:
            temp.unlink(missing_ok=True)
