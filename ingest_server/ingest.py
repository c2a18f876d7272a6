"""The server half of the chunk protocol, with no MQTT in it (DESIGN.md §1 steps 5–6).

``IngestProcessor.handle(topic, payload)`` takes one device message and returns the acks to
publish. A chunk is verified at once; making it durable waits for ``flush()`` (group commit):
the consumer calls it when its queue runs dry or every N messages, and acknowledges the
messages to the broker after it. Where a chunk's bytes wait for ``fin`` is
``settings.staging``:

- ``local`` (the default, one server process): written at once into a staging file of this
  process's store; ``flush()`` fsyncs the touched files, then records the new ranges in
  ``received_ranges`` in one transaction;
- ``database`` (several ingest workers on the shared subscription): kept in memory, and staged
  as rows by ``flush()`` in the transaction that records their ranges, so whichever worker
  gets ``fin`` assembles the file (``uploads.staging``). Every byte passes through the
  database once more: ~4x less throughput per process (bench/ingest_processor.py).

Any ack is produced only after a flush, so what an ack says was received is durable.
Chunk-level complaints are held back and returned by the next ``flush()``; ``init`` and
``fin`` flush and answer straight away.

The processor orders the steps; the parts live in ``ingest_server.uploads`` (DESIGN.md §3):
``manifest`` (authentication, pure), ``ledger`` (byte ranges), ``staging`` (the chunks'
bytes), ``commit`` (the assembled file and the clip), ``acks`` (what the device is told),
``rejections`` and ``reaper`` (bounds).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError

from common import topics
from common.clock import Clock, SystemClock
from common.errors import ProtocolError, TopicError
from common.ranges import add, covers, missing_ranges
from common.schemas import AckReplyTo, AckState, Fin, RejectReason, decode
from common.signing import SignedManifest, parse_signed_manifest
from ingest_server.db import SessionFactory
from ingest_server.errors import ChunkRefused, Refusal, StoreError, UploadRejected
from ingest_server.models import Device, Upload, UploadState
from ingest_server.settings import Settings
from ingest_server.store import Store, clip_path, staging_key
from ingest_server.uploads import commit, ledger, manifest, staging
from ingest_server.uploads.acks import (
    Outgoing,
    Reply,
    ack_message,
    chunk_with_bad_offset,
    refusal_reply,
    rejected_before,
    short,
)
from ingest_server.uploads.ledger import FinalUpload, OpenUpload, UploadCache
from ingest_server.uploads.rejections import RejectionLog

log = logging.getLogger(__name__)

__all__ = ["IngestProcessor", "Outgoing", "staging_key"]


class IngestProcessor:
    """Receives, verifies, stores and records uploads; one instance per consumer, not
    thread-safe (the consumer calls it from one worker thread at a time).

    ``counters`` counts refusals by ``RejectReason`` value (plus ``bad_topic``); ``stats``
    counts the work done (chunks, bytes, duplicates, flushes, completed uploads, init and fin
    answered rejected); ``messages`` counts the messages handled by topic kind (``/metrics``).
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
        flush_device_messages: Callable[[], object] | None = None,
    ) -> None:
        # Status, heartbeat and event messages go to ``device_messages``, and what it keeps
        # for a group commit is committed by ``flush_device_messages`` in every ``flush``;
        # ``on_clip_stored`` hears of every clip once it is durable and recorded (checks,
        # verdicts).
        self.device_messages = device_messages
        self.flush_device_messages = flush_device_messages
        self.on_clip_stored = on_clip_stored
        self.session_factory = session_factory
        self.store = store
        self.settings = settings
        self.clock = clock or SystemClock()
        self.counters: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self._cache = UploadCache()
        self._staged_in_db = settings.staging == "database"
        self._limits = manifest.ManifestLimits(settings.max_upload_size, settings.max_chunk_size)
        self._rejections = RejectionLog(
            settings.rejection_sample_per_reason, settings.rejection_sample_max
        )
        # Chunk complaints wait for the next flush; one per (device, upload, reason) suffices.
        self._deferred: dict[tuple[str, str, str], Reply] = {}

    # ---------------------------------------------------------------- entry points

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        """Process one device message; return the acks to publish (already durable)."""
        try:
            up = topics.parse_up(topic)
        except TopicError as exc:
            chunk = chunk_with_bad_offset(topic)
            if chunk is None:
                # No device to answer: count, log, go on.
                self.counters["bad_topic"] += 1
                log.warning("ignoring message on a bad topic: %s", exc)
            else:
                refusal = ChunkRefused(RejectReason.BAD_OFFSET, chunk.upload_id, exc.why)
                self._refuse_chunk(refusal, chunk)
            return []
        self.messages[up.kind.value] += 1
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
        reply: Reply | None
        try:
            if reply_to is AckReplyTo.INIT:
                reply = self._on_init(up, payload)
            else:
                reply = self._on_fin(up, payload)
        except Refusal as exc:
            self._record(exc, up)
            if isinstance(exc, UploadRejected):
                self.stats["uploads_rejected"] += 1
            reply = refusal_reply(exc, up, reply_to)
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
        """Make pending chunk writes durable (fsync, then one transaction), commit the device
        messages kept for it, and return the chunk-level acks that were waiting for it."""
        self._commit_pending()
        if self.flush_device_messages is not None:
            self.flush_device_messages()
        replies = list(self._deferred.values())
        self._deferred.clear()
        return [self._emit(reply) for reply in replies]

    # ---------------------------------------------------------------- init

    def _on_init(self, up: topics.UpTopic, payload: bytes) -> Reply:
        upload_id = up.upload_id or ""
        signed = manifest.parse_manifest(upload_id, payload)
        manifest.check_names(signed, upload_id)
        with self.session_factory() as session:
            device = session.get(Device, up.device_id)
            key = manifest.DeviceKey(
                device.public_key if device is not None else None,
                device is not None and device.enabled,
            )
        signed_manifest = manifest.authenticate(signed, upload_id, up.device_id, key, self._limits)
        # Whatever we answer must reflect durable state.
        self._commit_pending()
        with self.session_factory() as session:
            existing = session.get(Upload, (upload_id, up.device_id))
        if existing is None:
            self._check_room(up.device_id, upload_id, signed_manifest.size)
            existing = self._create_upload(signed, payload)
        if existing is not None:
            return self._reinit(existing, signed, up)
        self.stats["uploads_started"] += 1
        log.info(
            "upload %s from %s: %d bytes in %d-byte chunks",
            upload_id,
            up.device_id,
            signed_manifest.size,
            signed_manifest.chunk_size,
        )
        return Reply(
            up.device_id,
            upload_id,
            AckState.MISSING,
            AckReplyTo.INIT,
            missing=[(0, signed_manifest.size)],
        )

    def _check_room(self, device_id: str, upload_id: str, size: int) -> None:
        """Refuse (retryably) an upload to open past the device's count and byte allowance."""
        ledger.check_open_uploads(
            self.session_factory,
            device_id,
            upload_id,
            self.settings.max_open_uploads_per_device,
            size=size,
            byte_limit=self.settings.max_open_bytes_per_device,
        )

    def _create_upload(self, signed: SignedManifest, payload: bytes) -> Upload | None:
        """Insert a new upload; return the row another worker inserted first, if it did."""
        signed_manifest = signed.manifest
        device_id, upload_id = signed_manifest.device_id, signed_manifest.upload_id
        if not self._staged_in_db:
            self.store.prepare(staging_key(device_id, upload_id), signed_manifest.size)
        row = ledger.new_upload_row(signed_manifest, payload, self.clock.now())
        try:
            with self.session_factory.begin() as session:
                session.add(row)
        except IntegrityError:
            with self.session_factory() as session:
                existing = session.get(Upload, (upload_id, device_id))
            if existing is None:
                raise
            return existing
        self._cache.remember(OpenUpload(upload_id, device_id, signed_manifest, []))
        return None

    def _reinit(self, row: Upload, signed: SignedManifest, up: topics.UpTopic) -> Reply:
        """The same upload announced again (a restart, a lost ack): say where it stands."""
        upload_id = row.upload_id
        manifest.same_manifest(row.manifest, signed, upload_id)
        self.stats["reinits"] += 1
        state = UploadState(row.state)
        if state is UploadState.EXPIRED:
            return self._restart(row, up)
        if state is UploadState.COMPLETE:
            return Reply(up.device_id, upload_id, AckState.COMPLETE, AckReplyTo.INIT)
        if state is UploadState.REJECTED:
            return rejected_before(up.device_id, upload_id, AckReplyTo.INIT, row.reject_reason)
        self._load(up.device_id, upload_id, fresh=True)
        return Reply(up.device_id, upload_id, AckState.MISSING, AckReplyTo.INIT)

    def _restart(self, row: Upload, up: topics.UpTopic) -> Reply:
        """An expired upload announced again: stage it afresh, every byte missing."""
        upload_id = row.upload_id
        self._check_room(up.device_id, upload_id, row.size)
        if not self._staged_in_db:
            key = staging_key(up.device_id, upload_id)
            # Our descriptor may still point at the file the reaper deleted.
            self.store.discard(key)
            self.store.prepare(key, row.size)
        ledger.restart_expired(self.session_factory, (up.device_id, upload_id), self.clock.now())
        self._cache.forget((up.device_id, upload_id))
        self.stats["uploads_restarted"] += 1
        log.info("expired upload %s of %s started again", upload_id, up.device_id)
        upload = self._load(up.device_id, upload_id, fresh=True)
        if not isinstance(upload, OpenUpload):  # another worker finished it meanwhile
            return Reply(up.device_id, upload_id, AckState.MISSING, AckReplyTo.INIT)
        return Reply(
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
        reply = refusal_reply(refusal, up, AckReplyTo.CHUNK)
        self._deferred.setdefault((reply.device_id, reply.upload_id, refusal.reason.value), reply)

    def _on_chunk(self, up: topics.UpTopic, data: bytes) -> None:
        upload_id = up.upload_id or ""
        offset = up.offset or 0
        upload = self._load(up.device_id, upload_id)
        if upload is None:
            raise UploadRejected(
                RejectReason.UNKNOWN_UPLOAD, upload_id, f"no upload {upload_id} from {up.device_id}"
            )
        if isinstance(upload, FinalUpload):
            if upload.state is UploadState.REJECTED:
                reason = RejectReason(upload.reject_reason or RejectReason.UNKNOWN_UPLOAD)
                raise UploadRejected(reason, upload_id, "this upload was rejected")
            # Complete: a late copy. Expired: its fin will say so, once, not every chunk.
            self.stats["late_chunks"] += 1
            return
        span = ledger.check_chunk(upload.manifest, upload_id, offset, data)
        # Staged in the database, ``received`` may be stale (another worker restarted an
        # expired upload): a chunk is staged again rather than dropped, which costs a no-op
        # insert (``staging.stage``).
        durable = not self._staged_in_db and covers(upload.received, span)
        if durable or covers(upload.pending, span):
            # Same offset, same verified bytes: nothing to write (QoS 1 redelivery, resends).
            upload.duplicate_chunks += 1
            self.stats["duplicate_chunks"] += 1
            return
        if self._staged_in_db:
            upload.pending_data[offset] = data
        else:
            try:
                self.store.write_chunk(upload.staging_file, offset, data)
            except StoreError as exc:
                raise ChunkRefused(RejectReason.STORAGE_ERROR, upload_id, str(exc)) from exc
        upload.pending = add(upload.pending, span)
        upload.new_chunks += 1
        self.stats["chunks"] += 1
        self.stats["bytes"] += len(data)

    # ---------------------------------------------------------------- fin

    def _on_fin(self, up: topics.UpTopic, payload: bytes) -> Reply:
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
        if isinstance(upload, FinalUpload):
            return self._final_fin_reply(upload)
        signed_manifest = upload.manifest
        if fin.size != signed_manifest.size:
            self._reject_upload(
                upload,
                RejectReason.SIZE_MISMATCH,
                f"fin says {fin.size} bytes, the signed manifest {signed_manifest.size}",
            )
        if fin.sha256 != signed_manifest.sha256:
            self._reject_upload(
                upload,
                RejectReason.HASH_MISMATCH,
                "fin's sha256 differs from the signed manifest's",
            )
        missing = missing_ranges(upload.received, signed_manifest.size)
        if missing:
            return Reply(up.device_id, upload_id, AckState.MISSING, AckReplyTo.FIN, missing=missing)
        relative = clip_path(
            signed_manifest.device_id,
            upload_id,
            signed_manifest.cut_start,
            signed_manifest.content_type,
        )
        # A crash (or another worker) after the move but before the database commit leaves the
        # clip in place: recognise it by its hash and just finish recording it.
        if self.store.committed_sha256(relative) != signed_manifest.sha256:
            if self._staged_in_db:
                name = staging.assembly_name(upload.key)
                try:
                    digest, found = staging.assemble(
                        self.session_factory, self.store, upload.key, signed_manifest.size, name
                    )
                    if digest != signed_manifest.sha256:
                        # The same fin on two workers: the one that recorded the clip first
                        # deleted its rows under the other's feet. Answer as it stands now.
                        settled = self._load(up.device_id, upload_id, fresh=True)
                        if isinstance(settled, FinalUpload):
                            return self._final_fin_reply(settled)
                        upload = settled or upload  # the cache's object from now on
                        chunks = len(signed_manifest.chunk_sha256)
                        if found < chunks:
                            self.counters["unstaged_ranges"] += 1
                            log.error(
                                "upload %s of %s: every byte recorded as received, but %d of"
                                " its %d chunks are not staged in the database: does a process"
                                " of this deployment stage locally (CLASSCAM_STAGING)?",
                                upload_id,
                                up.device_id,
                                chunks - found,
                                chunks,
                            )
                    self._verify_staged(upload, name, digest)
                    self.store.commit(name, relative)
                finally:
                    self.store.discard(name)
            else:
                self._verify_staged(upload, upload.staging_file, None)
                self.store.commit(upload.staging_file, relative)
        self._record_clip(upload, relative)
        return Reply(up.device_id, upload_id, AckState.COMPLETE, AckReplyTo.FIN)

    def _final_fin_reply(self, upload: FinalUpload) -> Reply:
        """What a fin is told about an upload no longer receiving."""
        if upload.state is UploadState.COMPLETE:
            return Reply(upload.device_id, upload.upload_id, AckState.COMPLETE, AckReplyTo.FIN)
        if upload.state is UploadState.EXPIRED:
            raise UploadRejected(
                RejectReason.UPLOAD_EXPIRED,
                upload.upload_id,
                "no chunk for too long: its bytes were dropped; send init to start again",
            )
        return rejected_before(
            upload.device_id, upload.upload_id, AckReplyTo.FIN, upload.reject_reason
        )

    def _verify_staged(self, upload: OpenUpload, name: str, digest: str | None) -> None:
        """Check the staging file ``name`` (``digest``: hashed as it was assembled; None: hash
        it now); drop chunks whose staged bytes do not match their hash, so that they are
        sent again."""
        if digest == upload.manifest.sha256:
            return
        spans = commit.staged_bad_spans(self.store, upload, name)
        if spans is None:
            return
        if not spans:
            self._reject_upload(
                upload,
                RejectReason.HASH_MISMATCH,
                "every chunk matches its hash but the file does not: "
                "the manifest contradicts itself",
            )
        upload.received = ledger.forget_ranges(
            self.session_factory, upload, spans, self.clock.now()
        )
        offsets = ", ".join(str(start) for start, _ in spans)
        raise ChunkRefused(
            RejectReason.HASH_MISMATCH,
            upload.upload_id,
            f"file hash mismatch; chunks at offsets {offsets} are bad, send again",
        )

    def _record_clip(self, upload: OpenUpload, relative: str) -> None:
        """Record the clip (``commit.record_clip``), forget the staged bytes, tell listeners."""
        clip_id = commit.record_clip(self.session_factory, upload, relative, self.clock.now())
        self.store.discard(upload.staging_file)
        self._cache.finish(FinalUpload(upload.upload_id, upload.device_id, UploadState.COMPLETE))
        self.stats["uploads_complete"] += 1
        log.info(
            "upload %s complete: %s (%d bytes)", upload.upload_id, relative, upload.manifest.size
        )
        if self.on_clip_stored is not None and clip_id is not None:
            self.on_clip_stored(clip_id)

    def _reject_upload(self, upload: OpenUpload, reason: RejectReason, detail: str) -> None:
        """Mark the upload rejected for good, drop its staged bytes, and raise."""
        commit.mark_rejected(self.session_factory, upload.key, reason, self.clock.now())
        self.store.discard(upload.staging_file)
        self._cache.finish(
            FinalUpload(upload.upload_id, upload.device_id, UploadState.REJECTED, reason.value)
        )
        raise UploadRejected(reason, upload.upload_id, detail)

    # ---------------------------------------------------------------- durability

    def _commit_pending(self) -> None:
        """Stage the pending chunks (fsync the touched staging files; or insert the chunks'
        rows) and record their ranges, in one transaction."""
        dirty = self._cache.dirty()
        if not dirty and not self._rejections:
            return
        for upload in dirty:
            if not upload.pending or self._staged_in_db:
                continue
            try:
                self.store.sync(upload.staging_file)
            except StoreError as exc:
                # Not durable, so not received: the device will be asked for them again.
                refusal = ChunkRefused(
                    RejectReason.STORAGE_ERROR, upload.upload_id, str(exc), upload.device_id
                )
                self._record(refusal, None)
                upload.pending = []
                upload.new_chunks = 0
        with self.session_factory.begin() as session:
            merged = ledger.record_ranges(session, dirty, self.clock.now())
            self._rejections.write(session)
        self._rejections.clear()
        for upload in dirty:
            upload.received = merged.get(upload.key, upload.received)
            upload.pending = []
            upload.pending_data = {}
            upload.new_chunks = 0
            upload.duplicate_chunks = 0
        self.stats["flushes"] += 1

    # ---------------------------------------------------------------- cache

    def _load(
        self, device_id: str, upload_id: str, fresh: bool = False
    ) -> OpenUpload | FinalUpload | None:
        """The upload from memory, or from the database (after a restart, or ``fresh``)."""
        key = (device_id, upload_id)
        cached = self._cache.open.get(key)
        if cached is not None and not fresh:
            return cached
        final = self._cache.finished.get(key)
        if final is not None:
            return final
        with self.session_factory() as session:
            row = session.get(Upload, (upload_id, device_id))
        if row is None:
            return None
        if row.state == UploadState.EXPIRED.value:
            # Not final: an init may start it again (here or on another worker).
            self._cache.open.pop(key, None)
            return FinalUpload(upload_id, row.device_id, UploadState.EXPIRED)
        if row.state != UploadState.RECEIVING.value:
            final = FinalUpload(upload_id, row.device_id, UploadState(row.state), row.reject_reason)
            self._cache.finish(final)
            return final
        signed_manifest = (
            cached.manifest if cached else parse_signed_manifest(row.manifest.encode()).manifest
        )
        upload = OpenUpload(upload_id, row.device_id, signed_manifest, row.ranges)
        if cached is not None:
            upload.pending = cached.pending
            upload.pending_data = cached.pending_data
            upload.new_chunks = cached.new_chunks
            upload.duplicate_chunks = cached.duplicate_chunks
        self._cache.remember(upload)
        return upload

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
            short(refusal.detail),
        )

    def _emit(self, reply: Reply) -> Outgoing:
        missing = reply.missing
        if reply.state is AckState.MISSING and missing is None:
            upload = self._load(reply.device_id, reply.upload_id)
            missing = (
                missing_ranges(upload.received, upload.manifest.size)
                if isinstance(upload, OpenUpload)
                else []
            )
        return ack_message(reply, missing, self.clock.now())
