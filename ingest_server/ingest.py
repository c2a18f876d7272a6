"""The server half of the chunk protocol, with no MQTT in it (DESIGN.md §1 steps 5–6).

``IngestProcessor.handle(topic, payload)`` takes one device message and returns the acks to
publish. Chunks go to the staging file at once, but the fsync of the touched files and the
database update of ``received_ranges`` wait for ``flush()`` (group commit): the consumer calls
it when its queue runs dry or every N messages. Any ack is produced only after a flush, so what
an ack says was received is durable. Chunk-level complaints are therefore held back and
returned by the next ``flush()``; ``init`` and ``fin`` flush and answer straight away.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from common import topics
from common.clock import Clock, SystemClock
from common.errors import ProtocolError, SignatureInvalid, TopicError
from common.ranges import Range, add, chunk_length, covers, merge, missing_ranges, subtract
from common.schemas import (
    Ack,
    AckReplyTo,
    AckState,
    Fin,
    Manifest,
    RejectReason,
    decode,
)
from common.signing import SignedManifest, parse_signed_manifest
from ingest_server.db import SessionFactory
from ingest_server.errors import ChunkRefused, Refusal, StoreError, UploadRejected
from ingest_server.models import Clip, ClipCheck, Device, Upload, UploadState
from ingest_server.settings import Settings
from ingest_server.store import Store, clip_path, staging_key
from ingest_server.uploads.rejections import RejectionLog

log = logging.getLogger(__name__)

MAX_DETAIL = 500
MAX_CACHED_UPLOADS = 4096
MAX_FINISHED_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish: so far always an ``Ack`` on ``classcam/v1/down/{device}/ack``."""

    topic: str
    payload: bytes
    qos: int = 1


UploadKey = tuple[str, str]  # (device id, upload id): an upload id is its device's own name

__all__ = ["IngestProcessor", "Outgoing", "staging_key"]


@dataclass
class _Upload:
    """What the processor keeps in memory about an upload still receiving."""

    upload_id: str
    device_id: str
    manifest: Manifest
    received: list[Range]  # durable: fsync'ed and in the database
    pending: list[Range] = field(default_factory=list)  # written, not yet durable
    new_chunks: int = 0
    duplicate_chunks: int = 0

    @property
    def key(self) -> UploadKey:
        return (self.device_id, self.upload_id)

    @property
    def staging(self) -> str:
        return staging_key(self.device_id, self.upload_id)


@dataclass(frozen=True, slots=True)
class _Final:
    """An upload that reached a final state: all a late chunk or a repeated fin needs (the
    manifest, with a hash per chunk, is not kept)."""

    upload_id: str
    device_id: str
    state: UploadState
    reject_reason: str | None = None

    @property
    def key(self) -> UploadKey:
        return (self.device_id, self.upload_id)


@dataclass(frozen=True, slots=True)
class _Reply:
    """An ack to send once everything before it is durable; ``missing`` None = compute then."""

    device_id: str
    upload_id: str
    state: AckState
    reply_to: AckReplyTo
    reason: RejectReason | None = None
    detail: str | None = None
    missing: list[Range] | None = None


def _chunk_with_bad_offset(topic: str) -> topics.UpTopic | None:
    """A chunk topic whose only fault is its offset: its device can still be told."""
    parts = topic.split("/")
    if len(parts) != 8 or "/".join(parts[:3]) != topics.UP or parts[4:7:2] != ["file", "chunk"]:
        return None
    device_id, upload_id = parts[3], parts[5]
    if not (topics.ID_PATTERN.fullmatch(device_id) and topics.ID_PATTERN.fullmatch(upload_id)):
        return None
    return topics.UpTopic(device_id, topics.UpKind.FILE_CHUNK, upload_id, None)


def _short(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


class IngestProcessor:
    """Receives, verifies, stores and records uploads; one instance per consumer, not
    thread-safe (the consumer calls it from one worker thread at a time).

    ``counters`` counts refusals by ``RejectReason`` value (plus ``bad_topic``); ``stats``
    counts the work done (chunks, bytes, duplicates, flushes, completed uploads).
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        store: Store,
        settings: Settings,
        clock: Clock | None = None,
        *,
        device_messages: Callable[[topics.UpTopic, bytes], list[Outgoing] | None] | None = None,
        on_clip_stored: Callable[[int], object] | None = None,
    ) -> None:
        # Status, heartbeat and event messages go to ``device_messages``; ``on_clip_stored``
        # hears of every clip once it is durable and recorded (checks, verdicts).
        self.device_messages = device_messages
        self.on_clip_stored = on_clip_stored
        self.session_factory = session_factory
        self.store = store
        self.settings = settings
        self.clock = clock or SystemClock()
        self.counters: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self._uploads: dict[UploadKey, _Upload] = {}
        # Uploads that reached a final state recently: late chunks need no database lookup.
        self._finished: OrderedDict[UploadKey, _Final] = OrderedDict()
        self._rejections = RejectionLog(
            settings.rejection_sample_per_reason, settings.rejection_sample_max
        )
        # Chunk complaints wait for the next flush; one per (device, upload, reason) suffices.
        self._deferred: dict[tuple[str, str, str], _Reply] = {}

    # ---------------------------------------------------------------- entry points

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        """Process one device message; return the acks to publish (already durable)."""
        try:
            up = topics.parse_up(topic)
        except TopicError as exc:
            chunk = _chunk_with_bad_offset(topic)
            if chunk is None:
                # No device to answer: count, log, go on.
                self.counters["bad_topic"] += 1
                log.warning("ignoring message on a bad topic: %s", exc)
            else:
                refusal = ChunkRefused(RejectReason.BAD_OFFSET, chunk.upload_id, exc.why)
                self._refuse_chunk(refusal, chunk)
            return []
        if up.upload_id is None:
            # Status, heartbeat and event messages belong to other handlers.
            if self.device_messages is not None:
                # Event acks, sent only after the event's transaction committed.
                return list(self.device_messages(up, payload) or [])
            else:
                self.stats[f"ignored_{up.kind.value}"] += 1
            return []
        if up.kind is topics.UpKind.FILE_CHUNK:
            self._chunk(up, payload)
            return []
        reply_to = AckReplyTo.INIT if up.kind is topics.UpKind.FILE_INIT else AckReplyTo.FIN
        reply: _Reply | None
        try:
            if reply_to is AckReplyTo.INIT:
                reply = self._on_init(up, payload)
            else:
                reply = self._on_fin(up, payload)
        except Refusal as exc:
            self._record(exc, up)
            reply = self._refusal_reply(exc, up, reply_to)
        except StoreError as exc:
            # The server's own trouble (disk full…): no answer, so the device times out and
            # retries later with backoff instead of spinning on a broken store.
            self._record(Refusal(RejectReason.STORAGE_ERROR, up.upload_id, str(exc)), up)
            log.error("storage error on %s: %s", topic, exc)
            reply = None
        out = self.flush()
        if reply is not None:
            out.append(self._emit(reply))
        return out

    def flush(self) -> list[Outgoing]:
        """Make pending chunk writes durable (fsync, then one transaction) and return the
        chunk-level acks that were waiting for it."""
        self._commit_pending()
        replies = list(self._deferred.values())
        self._deferred.clear()
        return [self._emit(reply) for reply in replies]

    # ---------------------------------------------------------------- init

    def _on_init(self, up: topics.UpTopic, payload: bytes) -> _Reply:
        upload_id = up.upload_id or ""
        signed = self._parse_manifest(upload_id, payload)
        manifest = signed.manifest
        if manifest.upload_id != upload_id:
            raise UploadRejected(
                RejectReason.INVALID_MANIFEST,
                upload_id,
                f"topic names upload {upload_id}, manifest {manifest.upload_id}",
            )
        with self.session_factory() as session:
            device = session.get(Device, up.device_id)
            public_key = device.public_key if device is not None else None
            enabled = device is not None and device.enabled
        # Both can pass (a camera installed before it is registered; a device re-enabled):
        # the device keeps the clip and tries again later.
        if public_key is None:
            raise UploadRejected(
                RejectReason.UNKNOWN_DEVICE, upload_id, f"device {up.device_id} is not registered"
            )
        if not enabled:
            raise UploadRejected(
                RejectReason.DEVICE_DISABLED, upload_id, f"device {up.device_id} is disabled"
            )
        if manifest.device_id != up.device_id:
            raise UploadRejected(
                RejectReason.DEVICE_MISMATCH,
                upload_id,
                f"{up.device_id} sent a manifest of {manifest.device_id}",
            )
        try:
            signed.verify(public_key)
        except SignatureInvalid as exc:
            raise UploadRejected(RejectReason.SIGNATURE_INVALID, upload_id, str(exc)) from exc
        if manifest.size > self.settings.max_upload_size:
            raise UploadRejected(
                RejectReason.INVALID_MANIFEST,
                upload_id,
                f"size {manifest.size} exceeds {self.settings.max_upload_size}",
            )
        if manifest.chunk_size > self.settings.max_chunk_size:
            raise UploadRejected(
                RejectReason.INVALID_MANIFEST,
                upload_id,
                f"chunk_size {manifest.chunk_size} exceeds {self.settings.max_chunk_size}",
            )
        # Whatever we answer must reflect durable state.
        self._commit_pending()
        with self.session_factory() as session:
            existing = session.get(Upload, (upload_id, up.device_id))
        if existing is None:
            self._check_open_uploads(up.device_id, upload_id)
            existing = self._create_upload(signed, payload)
        if existing is not None:
            return self._reinit(existing, signed, up)
        self.stats["uploads_started"] += 1
        log.info(
            "upload %s from %s: %d bytes in %d-byte chunks",
            upload_id,
            up.device_id,
            manifest.size,
            manifest.chunk_size,
        )
        return _Reply(
            up.device_id, upload_id, AckState.MISSING, AckReplyTo.INIT, missing=[(0, manifest.size)]
        )

    def _check_open_uploads(self, device_id: str, upload_id: str) -> None:
        """Refuse a new upload (for now) to a device that holds too many open already."""
        limit = self.settings.max_open_uploads_per_device
        with self.session_factory() as session:
            open_uploads = session.scalar(
                select(func.count())
                .select_from(Upload)
                .where(Upload.device_id == device_id, Upload.state == UploadState.RECEIVING.value)
            )
        if (open_uploads or 0) >= limit:
            raise UploadRejected(
                RejectReason.TOO_MANY_UPLOADS,
                upload_id,
                f"device {device_id} has {open_uploads} uploads open (at most {limit})",
            )

    def _parse_manifest(self, upload_id: str, payload: bytes) -> SignedManifest:
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

    def _create_upload(self, signed: SignedManifest, payload: bytes) -> Upload | None:
        """Insert a new upload; return the row another worker inserted first, if it did."""
        manifest = signed.manifest
        self.store.prepare(staging_key(manifest.device_id, manifest.upload_id), manifest.size)
        now = self.clock.now()
        row = Upload(
            upload_id=manifest.upload_id,
            device_id=manifest.device_id,
            manifest=payload.decode(),
            size=manifest.size,
            sha256=manifest.sha256,
            chunk_size=manifest.chunk_size,
            state=UploadState.RECEIVING.value,
            reject_reason=None,
            received_ranges="[]",
            chunks_received=0,
            chunks_duplicate=0,
            created_at=now,
            updated_at=now,
        )
        try:
            with self.session_factory.begin() as session:
                session.add(row)
        except IntegrityError:
            with self.session_factory() as session:
                existing = session.get(Upload, (manifest.upload_id, manifest.device_id))
            if existing is None:
                raise
            return existing
        self._remember(_Upload(manifest.upload_id, manifest.device_id, manifest, []))
        return None

    def _reinit(self, row: Upload, signed: SignedManifest, up: topics.UpTopic) -> _Reply:
        """The same upload announced again (a restart, a lost ack): say where it stands."""
        upload_id = row.upload_id
        stored = parse_signed_manifest(row.manifest.encode())
        if stored.signed_bytes != signed.signed_bytes:
            raise UploadRejected(
                RejectReason.UPLOAD_CONFLICT,
                upload_id,
                "upload id already used for a different manifest",
            )
        self.stats["reinits"] += 1
        state = UploadState(row.state)
        if state is UploadState.EXPIRED:
            return self._restart(row, up)
        if state is UploadState.COMPLETE:
            return _Reply(up.device_id, upload_id, AckState.COMPLETE, AckReplyTo.INIT)
        if state is UploadState.REJECTED:
            reason = RejectReason(row.reject_reason) if row.reject_reason else None
            return _Reply(
                up.device_id,
                upload_id,
                AckState.REJECTED,
                AckReplyTo.INIT,
                reason=reason,
                detail="this upload was rejected before",
            )
        self._load(up.device_id, upload_id, fresh=True)
        return _Reply(up.device_id, upload_id, AckState.MISSING, AckReplyTo.INIT)

    def _restart(self, row: Upload, up: topics.UpTopic) -> _Reply:
        """An expired upload announced again: stage it afresh, every byte missing."""
        upload_id = row.upload_id
        self._check_open_uploads(up.device_id, upload_id)
        key = staging_key(up.device_id, upload_id)
        # Our descriptor may still point at the file the reaper deleted.
        self.store.discard(key)
        self.store.prepare(key, row.size)
        with self.session_factory.begin() as session:
            current = session.get(Upload, (upload_id, up.device_id), with_for_update=True)
            if current is not None and current.state == UploadState.EXPIRED.value:
                current.state = UploadState.RECEIVING.value
                current.ranges = []
                current.updated_at = self.clock.now()
        self._finished.pop((up.device_id, upload_id), None)
        self._uploads.pop((up.device_id, upload_id), None)
        self.stats["uploads_restarted"] += 1
        log.info("expired upload %s of %s started again", upload_id, up.device_id)
        upload = self._load(up.device_id, upload_id, fresh=True)
        if not isinstance(upload, _Upload):  # another worker finished it meanwhile
            return _Reply(up.device_id, upload_id, AckState.MISSING, AckReplyTo.INIT)
        return _Reply(
            up.device_id,
            upload_id,
            AckState.MISSING,
            AckReplyTo.INIT,
            missing=missing_ranges(upload.received, upload.manifest.size),
        )

    # ---------------------------------------------------------------- chunks

    def _chunk(self, up: topics.UpTopic, data: bytes) -> None:
        try:
            self._on_chunk(up, data)
        except Refusal as exc:
            self._refuse_chunk(exc, up)

    def _refuse_chunk(self, refusal: Refusal, up: topics.UpTopic) -> None:
        self._record(refusal, up)
        reply = self._refusal_reply(refusal, up, AckReplyTo.CHUNK)
        self._deferred.setdefault((reply.device_id, reply.upload_id, refusal.reason.value), reply)

    def _on_chunk(self, up: topics.UpTopic, data: bytes) -> None:
        upload_id = up.upload_id or ""
        offset = up.offset or 0
        upload = self._load(up.device_id, upload_id)
        if upload is None:
            raise UploadRejected(
                RejectReason.UNKNOWN_UPLOAD, upload_id, f"no upload {upload_id} from {up.device_id}"
            )
        if isinstance(upload, _Final):
            if upload.state is UploadState.REJECTED:
                reason = RejectReason(upload.reject_reason or RejectReason.UNKNOWN_UPLOAD)
                raise UploadRejected(reason, upload_id, "this upload was rejected")
            # Complete: a late copy. Expired: its fin will say so, once, not every chunk.
            self.stats["late_chunks"] += 1
            return
        manifest = upload.manifest
        size, chunk_size = manifest.size, manifest.chunk_size
        if offset % chunk_size or offset >= size:
            raise ChunkRefused(
                RejectReason.BAD_OFFSET,
                upload_id,
                f"offset {offset} is not a chunk of {size} bytes in {chunk_size}s",
            )
        if len(data) > chunk_size:
            raise ChunkRefused(
                RejectReason.OVERSIZE_CHUNK,
                upload_id,
                f"chunk at {offset} has {len(data)} bytes, chunk_size {chunk_size}",
            )
        index = offset // chunk_size
        expected = chunk_length(index, size, chunk_size)
        if len(data) != expected:
            raise ChunkRefused(
                RejectReason.SIZE_MISMATCH,
                upload_id,
                f"chunk at {offset} has {len(data)} bytes, expected {expected}",
            )
        if hashlib.sha256(data).hexdigest() != manifest.chunk_sha256[index]:
            raise ChunkRefused(
                RejectReason.CHUNK_HASH_MISMATCH,
                upload_id,
                f"chunk at {offset} does not match its manifest hash",
            )
        span = (offset, offset + len(data))
        if covers(upload.received, span) or covers(upload.pending, span):
            # Same offset, same verified bytes: nothing to write (QoS 1 redelivery, resends).
            upload.duplicate_chunks += 1
            self.stats["duplicate_chunks"] += 1
            return
        try:
            self.store.write_chunk(upload.staging, offset, data)
        except StoreError as exc:
            raise ChunkRefused(RejectReason.STORAGE_ERROR, upload_id, str(exc)) from exc
        upload.pending = add(upload.pending, span)
        upload.new_chunks += 1
        self.stats["chunks"] += 1
        self.stats["bytes"] += len(data)

    # ---------------------------------------------------------------- fin

    def _on_fin(self, up: topics.UpTopic, payload: bytes) -> _Reply:
        upload_id = up.upload_id or ""
        try:
            fin = decode(Fin, payload)
        except ProtocolError as exc:
            raise UploadRejected(RejectReason.MALFORMED_JSON, upload_id, str(exc)) from exc
        if fin.upload_id != upload_id:
            raise UploadRejected(
                RejectReason.MALFORMED_JSON,
                upload_id,
                f"topic names upload {upload_id}, fin {fin.upload_id}",
            )
        self._commit_pending()
        upload = self._load(up.device_id, upload_id, fresh=True)
        if upload is None:
            raise UploadRejected(
                RejectReason.UNKNOWN_UPLOAD, upload_id, f"no upload {upload_id} from {up.device_id}"
            )
        if isinstance(upload, _Final) and upload.state is UploadState.COMPLETE:
            return _Reply(up.device_id, upload_id, AckState.COMPLETE, AckReplyTo.FIN)
        if isinstance(upload, _Final) and upload.state is UploadState.EXPIRED:
            raise UploadRejected(
                RejectReason.UPLOAD_EXPIRED,
                upload_id,
                "no chunk for too long: its bytes were dropped; send init to start again",
            )
        if isinstance(upload, _Final):
            reason = RejectReason(upload.reject_reason) if upload.reject_reason else None
            return _Reply(
                up.device_id,
                upload_id,
                AckState.REJECTED,
                AckReplyTo.FIN,
                reason=reason,
                detail="this upload was rejected before",
            )
        manifest = upload.manifest
        if fin.size != manifest.size:
            self._reject_upload(
                upload,
                RejectReason.SIZE_MISMATCH,
                f"fin says {fin.size} bytes, the signed manifest {manifest.size}",
            )
        if fin.sha256 != manifest.sha256:
            self._reject_upload(
                upload,
                RejectReason.HASH_MISMATCH,
                "fin's sha256 differs from the signed manifest's",
            )
        missing = missing_ranges(upload.received, manifest.size)
        if missing:
            return _Reply(
                up.device_id, upload_id, AckState.MISSING, AckReplyTo.FIN, missing=missing
            )
        relative = clip_path(
            manifest.device_id, upload_id, manifest.cut_start, manifest.content_type
        )
        # A crash after the move but before the database commit leaves the clip in place:
        # recognise it by its hash and just finish recording it.
        if self.store.committed_sha256(relative) != manifest.sha256:
            self._verify_staged(upload)
            self.store.commit(upload.staging, relative)
        self._record_clip(upload, relative)
        return _Reply(up.device_id, upload_id, AckState.COMPLETE, AckReplyTo.FIN)

    def _verify_staged(self, upload: _Upload) -> None:
        """Check the assembled file; drop chunks that went bad on disk so they are re-sent."""
        manifest = upload.manifest
        whole, chunks = self.store.staging_digest(
            upload.staging, manifest.size, manifest.chunk_size
        )
        if whole == manifest.sha256:
            return
        bad = [
            i
            for i, expected in enumerate(manifest.chunk_sha256)
            if i >= len(chunks) or chunks[i] != expected
        ]
        if not bad:
            self._reject_upload(
                upload,
                RejectReason.HASH_MISMATCH,
                "every chunk matches its hash but the file does not: "
                "the manifest contradicts itself",
            )
        spans = [
            (
                i * manifest.chunk_size,
                i * manifest.chunk_size + chunk_length(i, manifest.size, manifest.chunk_size),
            )
            for i in bad
        ]
        with self.session_factory.begin() as session:
            row = session.get(Upload, (upload.upload_id, upload.device_id), with_for_update=True)
            if row is None:
                raise UploadRejected(RejectReason.UNKNOWN_UPLOAD, upload.upload_id, "vanished")
            ranges = row.ranges
            for span in spans:
                ranges = subtract(ranges, span)
            row.ranges = ranges
            row.updated_at = self.clock.now()
        upload.received = ranges
        offsets = ", ".join(str(start) for start, _ in spans)
        raise ChunkRefused(
            RejectReason.HASH_MISMATCH,
            upload.upload_id,
            f"file hash mismatch; chunks at offsets {offsets} are bad, send again",
        )

    def _record_clip(self, upload: _Upload, relative: str) -> None:
        """Insert the clip, its pending check, and mark the upload complete, in one
        transaction: a crash after the commit leaves the check queued, never forgotten."""
        manifest = upload.manifest
        now = self.clock.now()
        clip_id: int | None = None
        try:
            with self.session_factory.begin() as session:
                row = session.get(
                    Upload, (upload.upload_id, upload.device_id), with_for_update=True
                )
                if row is not None and row.state != UploadState.COMPLETE.value:
                    clip = Clip(
                        upload_id=upload.upload_id,
                        device_id=manifest.device_id,
                        session_id=manifest.session_id,
                        cmd_id=manifest.cmd_id,
                        clock_offset_s=manifest.clock_offset_s,
                        kind=manifest.kind.value,
                        sha256=manifest.sha256,
                        size=manifest.size,
                        path=relative,
                        requested_start=manifest.requested_start,
                        requested_end=manifest.requested_end,
                        cut_start=manifest.cut_start,
                        cut_end=manifest.cut_end,
                        duration_s=manifest.duration_s,
                        frames=manifest.frames,
                        width=manifest.width,
                        height=manifest.height,
                        codec=manifest.codec,
                        stored_at=now,
                    )
                    session.add(clip)
                    session.flush()
                    clip_id = clip.id
                    session.add(ClipCheck(clip_id=clip.id, attempts=0))
                    row.state = UploadState.COMPLETE.value
                    row.updated_at = now
        except IntegrityError:
            # Another worker recorded the same clip first: that is the outcome we wanted.
            log.info("upload %s was recorded by another worker", upload.upload_id)
        self.store.discard(upload.staging)
        self._finish(_Final(upload.upload_id, upload.device_id, UploadState.COMPLETE))
        self.stats["uploads_complete"] += 1
        log.info("upload %s complete: %s (%d bytes)", upload.upload_id, relative, manifest.size)
        if self.on_clip_stored is not None and clip_id is not None:
            self.on_clip_stored(clip_id)

    def _reject_upload(self, upload: _Upload, reason: RejectReason, detail: str) -> None:
        """Mark the upload rejected for good, drop its staged bytes, and raise."""
        with self.session_factory.begin() as session:
            row = session.get(Upload, (upload.upload_id, upload.device_id), with_for_update=True)
            if row is not None:
                row.state = UploadState.REJECTED.value
                row.reject_reason = reason.value
                row.updated_at = self.clock.now()
        self.store.discard(upload.staging)
        self._finish(_Final(upload.upload_id, upload.device_id, UploadState.REJECTED, reason.value))
        raise UploadRejected(reason, upload.upload_id, detail)

    # ---------------------------------------------------------------- durability

    def _commit_pending(self) -> None:
        """fsync touched staging files, then record their new ranges in one transaction."""
        dirty = [u for u in self._uploads.values() if u.pending or u.duplicate_chunks]
        if not dirty and not self._rejections:
            return
        for upload in dirty:
            if not upload.pending:
                continue
            try:
                self.store.sync(upload.staging)
            except StoreError as exc:
                # Not durable, so not received: the device will be asked for them again.
                refusal = ChunkRefused(
                    RejectReason.STORAGE_ERROR, upload.upload_id, str(exc), upload.device_id
                )
                self._record(refusal, None)
                upload.pending = []
                upload.new_chunks = 0
        merged: dict[UploadKey, list[Range]] = {}
        now = self.clock.now()
        with self.session_factory.begin() as session:
            for upload in dirty:
                row = session.get(
                    Upload, (upload.upload_id, upload.device_id), with_for_update=True
                )
                if row is None or row.state != UploadState.RECEIVING.value:
                    continue
                # Merge with what is in the database: another worker may have added ranges.
                ranges = merge([*row.ranges, *upload.pending])
                row.ranges = ranges
                row.chunks_received += upload.new_chunks
                row.chunks_duplicate += upload.duplicate_chunks
                row.updated_at = now
                merged[upload.key] = ranges
            self._rejections.write(session)
        self._rejections.clear()
        for upload in dirty:
            upload.received = merged.get(upload.key, upload.received)
            upload.pending = []
            upload.new_chunks = 0
            upload.duplicate_chunks = 0
        self.stats["flushes"] += 1

    # ---------------------------------------------------------------- cache

    def _load(self, device_id: str, upload_id: str, fresh: bool = False) -> _Upload | _Final | None:
        """The upload from memory, or from the database (after a restart, or ``fresh``)."""
        key = (device_id, upload_id)
        cached = self._uploads.get(key)
        if cached is not None and not fresh:
            return cached
        final = self._finished.get(key)
        if final is not None:
            return final
        with self.session_factory() as session:
            row = session.get(Upload, (upload_id, device_id))
        if row is None:
            return None
        if row.state == UploadState.EXPIRED.value:
            # Not final: an init may start it again (here or on another worker).
            self._uploads.pop(key, None)
            return _Final(upload_id, row.device_id, UploadState.EXPIRED)
        if row.state != UploadState.RECEIVING.value:
            final = _Final(upload_id, row.device_id, UploadState(row.state), row.reject_reason)
            self._finish(final)
            return final
        manifest = (
            cached.manifest if cached else parse_signed_manifest(row.manifest.encode()).manifest
        )
        upload = _Upload(upload_id, row.device_id, manifest, row.ranges)
        if cached is not None:
            upload.pending = cached.pending
            upload.new_chunks = cached.new_chunks
            upload.duplicate_chunks = cached.duplicate_chunks
        self._remember(upload)
        return upload

    def _remember(self, upload: _Upload) -> None:
        self._uploads[upload.key] = upload
        if len(self._uploads) > MAX_CACHED_UPLOADS:
            for key, old in list(self._uploads.items()):
                if not old.pending and not old.duplicate_chunks:
                    del self._uploads[key]
                    break

    def _finish(self, final: _Final) -> None:
        self._uploads.pop(final.key, None)
        self._finished[final.key] = final
        self._finished.move_to_end(final.key)
        while len(self._finished) > MAX_FINISHED_REMEMBERED:
            self._finished.popitem(last=False)

    # ---------------------------------------------------------------- refusals and acks

    def _record(self, refusal: Refusal, up: topics.UpTopic | None) -> None:
        """Count, log and (at the next flush) durably record a refusal."""
        device_id = up.device_id if up else refusal.device_id
        self.counters[refusal.reason.value] += 1
        log.warning(
            "refused %s from %s (upload %s): %s",
            refusal.reason.value,
            device_id,
            refusal.upload_id,
            refusal.detail,
        )
        self._rejections.add(
            self.clock.now(),
            device_id,
            refusal.upload_id,
            refusal.reason.value,
            _short(refusal.detail),
        )

    def _refusal_reply(self, refusal: Refusal, up: topics.UpTopic, reply_to: AckReplyTo) -> _Reply:
        state = AckState.MISSING if isinstance(refusal, ChunkRefused) else AckState.REJECTED
        return _Reply(
            up.device_id,
            up.upload_id or "",
            state,
            reply_to,
            reason=refusal.reason,
            detail=_short(refusal.detail),
        )

    def _emit(self, reply: _Reply) -> Outgoing:
        missing = reply.missing
        if reply.state is AckState.MISSING and missing is None:
            upload = self._load(reply.device_id, reply.upload_id)
            missing = (
                missing_ranges(upload.received, upload.manifest.size)
                if isinstance(upload, _Upload)
                else []
            )
        ack = Ack(
            upload_id=reply.upload_id,
            state=reply.state,
            reply_to=reply.reply_to,
            missing=missing or [],
            reason=reply.reason,
            detail=reply.detail,
            server_time=self.clock.now(),
        )
        return Outgoing(topics.ack(reply.device_id), ack.to_bytes(), 1)
