"""Recording one class session for as long as it is open, through camera losses and full disks.

The session recorder runs in its own thread. When the camera vanishes, what was recorded is
kept, ``camera_lost`` is reported, and the camera is retried with capped backoff; when frames
flow again, ``camera_restored`` and the ``recording_gap`` (device clock bounds) are reported.
A write error (a full SD card) is reported the same way, after asking for space to be freed.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import av

from common.clock import Clock, wait_event
from common.schemas import EventType
from edge_agent.camera import CameraSource, Frame
from edge_agent.cameras import EncodedCamera
from edge_agent.errors import CameraError
from edge_agent.recorder import Recorder
from edge_agent.spool import Spool

log = logging.getLogger(__name__)

EmitEvent = Callable[..., object]
CameraFactory = Callable[[], "CameraSource | EncodedCamera"]


def _errno_text(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    return os.strerror(code) if isinstance(code, int) and code in errno.errorcode else "no errno"


class _WatchedCamera:
    """A camera that tells us when its first frame arrives (proof the camera is back)."""

    def __init__(self, camera: CameraSource, on_first_frame: Callable[[Frame], None]) -> None:
        self._camera = camera
        self._on_first_frame = on_first_frame
        self._seen = False
        self.name, self.width, self.height, self.fps = (
            camera.name,
            camera.width,
            camera.height,
            camera.fps,
        )

    def open(self) -> None:
        self._camera.open()

    def read(self) -> Frame:
        frame = self._camera.read()
        if not self._seen:
            self._seen = True
            self._on_first_frame(frame)
        return frame

    def close(self) -> None:
        self._camera.close()


@dataclass
class RecordingSettings:
    segment_seconds: float = 2.0
    keyframe_interval_s: float = 1.0
    bitrate: int = 1_000_000
    preset: str = "ultrafast"
    retry_min_s: float = 1.0
    retry_max_s: float = 30.0


@dataclass
class SessionRecording:
    """A running session recording: the thread, its stop event, what it has seen."""

    session_id: str
    started: datetime
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    recording_ids: list[int] = field(default_factory=list)
    gaps: list[tuple[datetime, datetime]] = field(default_factory=list)
    last_frame_wall: datetime | None = None
    frames_flowing: bool = False


class SessionRecorder:
    """Starts and stops the recording of sessions; one at a time."""

    def __init__(
        self,
        spool: Spool,
        clock: Clock,
        camera_factory: CameraFactory,
        settings: RecordingSettings,
        emit: EmitEvent,
        on_write_error: Callable[[], None] | None = None,
    ) -> None:
        self.spool = spool
        self.clock = clock
        self.camera_factory = camera_factory
        self.settings = settings
        self.emit = emit
        self.on_write_error = on_write_error
        self.current: SessionRecording | None = None

    def start(self, session_id: str) -> SessionRecording:
        if self.current is not None:
            raise RuntimeError(f"session {self.current.session_id} is still recording")
        rec = SessionRecording(session_id, self.clock.now())
        rec.thread = threading.Thread(
            target=self._run, args=(rec,), name=f"record-{session_id}", daemon=True
        )
        self.current = rec
        rec.thread.start()
        return rec

    def stop(self, timeout: float = 30.0) -> SessionRecording | None:
        rec, self.current = self.current, None
        if rec is None:
            return None
        rec.stop.set()
        if rec.thread is not None:
            rec.thread.join(timeout)
        return rec

    def _run(self, rec: SessionRecording) -> None:
        backoff = self.settings.retry_min_s
        lost_at: datetime | None = None
        lost_reason = ""

        def first_frame(frame: Frame) -> None:
            nonlocal lost_at, backoff
            rec.frames_flowing = True
            if lost_at is not None:
                gap = (lost_at, frame.wall)
                rec.gaps.append(gap)
                self.emit(
                    EventType.CAMERA_RESTORED,
                    session_id=rec.session_id,
                    data={"after_s": (frame.wall - lost_at).total_seconds()},
                )
                self.emit(
                    EventType.RECORDING_GAP,
                    session_id=rec.session_id,
                    data={
                        "start": gap[0].isoformat(),
                        "end": gap[1].isoformat(),
                        "reason": lost_reason,
                    },
                )
                lost_at = None
            backoff = self.settings.retry_min_s

        def on_gap(start: datetime, end: datetime) -> None:
            rec.gaps.append((start, end))
            self.emit(
                EventType.RECORDING_GAP,
                session_id=rec.session_id,
                data={"start": start.isoformat(), "end": end.isoformat(), "reason": "frames_late"},
            )

        first_camera = self.camera_factory()
        if isinstance(first_camera, EncodedCamera):
            self._run_encoded(rec, first_camera)
            return
        pending: CameraSource | None = first_camera
        while not rec.stop.is_set():
            s = self.settings
            recorder: Recorder | None = None
            try:
                source = pending if pending is not None else self.camera_factory()
                pending = None
                assert not isinstance(source, EncodedCamera)
                camera = _WatchedCamera(source, first_frame)
                recorder = Recorder(
                    camera,
                    self.spool,
                    self.clock,
                    segment_seconds=s.segment_seconds,
                    keyframe_interval_s=s.keyframe_interval_s,
                    bitrate=s.bitrate,
                    session_id=rec.session_id,
                    preset=s.preset,
                    on_gap=on_gap,
                )
                rec.recording_ids.append(recorder.run(rec.stop))
                return
            except CameraError as exc:
                reason, detail = "camera_lost", str(exc)
            except (OSError, sqlite3.Error, av.FFmpegError) as exc:
                # A full or failing SD card: the muxer, the segment rename or the index write.
                reason, detail = "write_error", f"{exc} ({_errno_text(exc)})"
                if self.on_write_error is not None:
                    self.on_write_error()
            except Exception as exc:  # the recording thread must never die silently
                log.exception("session %s: recorder failed", rec.session_id)
                reason, detail = "recorder_error", str(exc)
            if (
                recorder is not None
                and recorder.recording_id is not None
                and (recorder.recording_id not in rec.recording_ids)
            ):
                rec.recording_ids.append(recorder.recording_id)
            rec.frames_flowing = False
            if lost_at is None:
                lost_at = self.clock.now()
                lost_reason = reason
                log.warning("session %s: %s: %s", rec.session_id, reason, detail)
                data: dict[str, object] = {"reason": reason, "detail": detail}
                if reason == "write_error":
                    # FFmpeg often says EINVAL when the disk is full; the free space says why.
                    data["free_bytes"] = shutil.disk_usage(self.spool.root).free
                self.emit(
                    EventType.CAMERA_LOST if reason == "camera_lost" else EventType.ERROR,
                    session_id=rec.session_id,
                    data=data,
                )
            wait_event(rec.stop, backoff * random.uniform(0.8, 1.0), self.clock)
            backoff = min(backoff * 2, self.settings.retry_max_s)
        if lost_at is not None:
            end = self.clock.now()
            rec.gaps.append((lost_at, end))
            self.emit(
                EventType.RECORDING_GAP,
                session_id=rec.session_id,
                data={
                    "start": lost_at.isoformat(),
                    "end": end.isoformat(),
                    "reason": lost_reason,
                    "open_at_close": True,
                },
            )

    def _run_encoded(self, rec: SessionRecording, camera: EncodedCamera) -> None:
        """An IP or CSI camera delivers H.264 itself and reconnects by itself: one call."""
        lost_reason: list[str] = []

        def on_lost(reason: str) -> None:
            rec.frames_flowing = False
            lost_reason.append(reason)
            self.emit(
                EventType.CAMERA_LOST,
                session_id=rec.session_id,
                data={"reason": "camera_lost", "detail": reason},
            )

        def on_gap(start: datetime, end: datetime) -> None:
            rec.gaps.append((start, end))
            if lost_reason:
                self.emit(
                    EventType.CAMERA_RESTORED,
                    session_id=rec.session_id,
                    data={"after_s": (end - start).total_seconds()},
                )
            self.emit(
                EventType.RECORDING_GAP,
                session_id=rec.session_id,
                data={
                    "start": start.isoformat(),
                    "end": end.isoformat(),
                    "reason": "camera_lost" if lost_reason else "frames_late",
                },
            )
            lost_reason.clear()
            rec.frames_flowing = True

        rec.frames_flowing = True
        try:
            rec.recording_ids += camera.record(
                self.spool,
                rec.stop,
                segment_seconds=self.settings.segment_seconds,
                session_id=rec.session_id,
                on_gap=on_gap,
                on_lost=on_lost,
            )
        except Exception as exc:  # e.g. UnsupportedStream: the camera is set up wrong
            log.exception("session %s: camera %s cannot record", rec.session_id, camera.name)
            self.emit(
                EventType.ERROR,
                session_id=rec.session_id,
                data={"reason": "camera_unsupported", "detail": str(exc)},
            )
        finally:
            rec.frames_flowing = False
