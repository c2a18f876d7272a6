"""Turning a requested window into a signed, durable outbox entry (DESIGN.md §1 step 4)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.chunks import digest_file
from common.clock import Clock
from common.schemas import ClipKind, Manifest
from common.signing import sign_manifest
from edge_agent.camera import Frame
from edge_agent.cutter import CutResult, cut_window
from edge_agent.errors import AgentError
from edge_agent.outbox import Outbox, OutboxItem
from edge_agent.ports import MadeClip
from edge_agent.spool import Spool, durable_replace, temp_path


def upload_id_for(device_id: str, cmd_id: str) -> str:
    """The upload id of the clip ``device_id`` makes for ``cmd_id``: stable, so a repeated
    command finds the clip it already cut; the device's own, so another device answering the
    same command never lands on it."""
    digest = hashlib.sha256()
    for part in (device_id, cmd_id):
        raw = part.encode()
        digest.update(len(raw).to_bytes(4, "big") + raw)  # length-prefixed: no two splits alike
    return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ClipRequest:
    """A window to cut, as the server asked for it (server UTC) and as the device maps it."""

    start: datetime
    end: datetime
    session_id: str | None = None
    cmd_id: str | None = None
    # Device clock minus server clock as estimated now: maps footage indexed without an
    # estimate of its own (segments carry the offset of when they were recorded).
    clock_offset_s: float = 0.0


def build_manifest(
    request: ClipRequest,
    cut: CutResult,
    *,
    upload_id: str,
    device_id: str,
    chunk_size: int,
    created_at: datetime,
) -> Manifest:
    """The manifest of a finished cut: what was asked (server UTC), what was cut (device
    time, with the offset that maps it to server time), and every hash."""
    digest = digest_file(cut.path, chunk_size)
    return Manifest(
        upload_id=upload_id,
        device_id=device_id,
        session_id=request.session_id,
        cmd_id=request.cmd_id,
        requested_start=request.start,
        requested_end=request.end,
        cut_start=cut.cut_start,
        cut_end=cut.cut_end,
        clock_offset_s=cut.clock_offset_s,
        size=digest.size,
        sha256=digest.sha256,
        chunk_size=chunk_size,
        chunk_sha256=digest.chunk_sha256,
        codec=cut.codec,
        duration_s=cut.duration_s,
        frames=cut.frames,
        width=cut.width,
        height=cut.height,
        created_at=created_at,
    )


def cut_and_enqueue(
    spool: Spool,
    outbox: Outbox,
    key: Ed25519PrivateKey,
    request: ClipRequest,
    *,
    device_id: str,
    chunk_size: int,
    clock: Clock,
    upload_id: str | None = None,
) -> OutboxItem:
    """Cut ``request`` from the spool by stream copy, sign its manifest, queue it for upload."""
    upload_id = upload_id or uuid.uuid4().hex
    path = outbox.file_path(upload_id)
    cut = cut_window(spool, request.start, request.end, path, clock_offset_s=request.clock_offset_s)
    manifest = build_manifest(
        request,
        cut,
        upload_id=upload_id,
        device_id=device_id,
        chunk_size=chunk_size,
        created_at=clock.now(),
    )
    payload = sign_manifest(manifest, key)
    return outbox.enqueue(
        upload_id, path, payload, size=manifest.size, chunk_size=chunk_size, sha256=manifest.sha256
    )


def enqueue_snapshot(
    outbox: Outbox,
    key: Ed25519PrivateKey,
    jpeg: bytes,
    taken: datetime,
    *,
    width: int,
    height: int,
    device_id: str,
    chunk_size: int,
    clock: Clock,
    cmd_id: str | None = None,
    upload_id: str | None = None,
    kind: ClipKind = ClipKind.SNAPSHOT,
) -> OutboxItem:
    """Queue a still (a snapshot, or the installation's reference view) for upload."""
    upload_id = upload_id or uuid.uuid4().hex
    path = outbox.file_path(upload_id, ".jpg")
    durable_write(path, jpeg)
    digest = digest_file(path, chunk_size)
    manifest = Manifest(
        upload_id=upload_id,
        device_id=device_id,
        kind=kind,
        cmd_id=cmd_id,
        cut_start=taken,
        cut_end=taken,
        size=digest.size,
        sha256=digest.sha256,
        chunk_size=chunk_size,
        chunk_sha256=digest.chunk_sha256,
        content_type="image/jpeg",
        codec="jpeg",
        duration_s=0.0,
        frames=1,
        width=width,
        height=height,
        created_at=clock.now(),
    )
    return outbox.enqueue(
        upload_id,
        path,
        sign_manifest(manifest, key),
        size=digest.size,
        chunk_size=chunk_size,
        sha256=digest.sha256,
    )


def durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync, rename, fsync the directory."""
    temp = temp_path(path)
    temp.write_bytes(data)
    durable_replace(temp, path)


class SpoolClipMaker:
    """The ``ClipMaker`` of a device: cuts from its spool and takes stills, signs them with its
    key and queues them in its outbox under ``upload_id_for(device_id, cmd_id)``, so a repeated
    command finds the clip it already made instead of making another."""

    def __init__(
        self,
        *,
        spool: Spool,
        outbox: Outbox,
        key: Ed25519PrivateKey,
        device_id: str,
        chunk_size: int,
        clock: Clock,
        clock_offset_s: Callable[[], float],
        wait_for_spool: Callable[[datetime], None],
        grab_frame: Callable[[], Frame],
        link_upload: Callable[[str, str], None],
        on_queued: Callable[[], None],
    ) -> None:
        self.spool = spool
        self.outbox = outbox
        self.key = key
        self.device_id = device_id
        self.chunk_size = chunk_size
        self.clock = clock
        self.clock_offset_s = clock_offset_s  # device clock minus server clock, 0 if unknown
        self.wait_for_spool = wait_for_spool  # until the spool holds footage up to a device time
        self.grab_frame = grab_frame
        self.link_upload = link_upload  # pins a session's recording until this upload is acked
        self.on_queued = on_queued  # wakes the uploader

    def cut(self, cmd_id: str, session_id: str | None, start: datetime, end: datetime) -> MadeClip:
        """Cut ``[start, end]`` (server UTC) through the present clock offset; ``CutError``
        when the spool does not hold it."""
        upload_id = upload_id_for(self.device_id, cmd_id)
        item = self.outbox.get(upload_id)
        if item is None:
            offset = self.clock_offset_s()
            self.wait_for_spool(end + timedelta(seconds=offset))
            request = ClipRequest(
                start=start, end=end, session_id=session_id, cmd_id=cmd_id, clock_offset_s=offset
            )
            if session_id:
                # Before the clip exists: an upload finished in between must still count
                # against its session's pin.
                self.link_upload(upload_id, session_id)
            item = cut_and_enqueue(
                self.spool,
                self.outbox,
                self.key,
                request,
                device_id=self.device_id,
                chunk_size=self.chunk_size,
                clock=self.clock,
                upload_id=upload_id,
            )
            self.on_queued()
        return MadeClip(upload_id, item.size, item.sha256)

    def snapshot(self, cmd_id: str) -> MadeClip:
        """A JPEG of the classroom now (the newest keyframe, or the camera itself)."""
        upload_id = upload_id_for(self.device_id, cmd_id)
        item = self.outbox.get(upload_id)
        if item is None:
            frame = self.grab_frame()
            import cv2  # only snapshots need OpenCV here

            ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 85])
            if not ok:
                raise AgentError("JPEG encoding of the snapshot failed")
            item = enqueue_snapshot(
                self.outbox,
                self.key,
                jpeg.tobytes(),
                frame.wall,
                width=frame.image.shape[1],
                height=frame.image.shape[0],
                device_id=self.device_id,
                cmd_id=cmd_id,
                chunk_size=self.chunk_size,
                clock=self.clock,
                upload_id=upload_id,
            )
            self.on_queued()
        return MadeClip(upload_id, item.size, item.sha256)
