"""Recording a camera into the spool as keyframe-aligned H.264 segment files.

Each segment is a small MP4 rather than MPEG-TS because:

* its packets are length-prefixed (AVCC) with the SPS/PPS in ``avcC``, exactly what the cut
  MP4 needs, so the cutter copies packet bytes unchanged with no bitstream filter;
* it stores exact 90 kHz sample times and per-sample durations (TS rewrites timestamps
  through its mux delay and 33-bit clock, and has no durations);
* the one thing TS does better, surviving a truncated write, does not matter here: a
  segment is renamed into place only once complete, so no reader ever sees a partial file.

Every file's own pts start at 0; the spool index holds each segment's recording-relative
``start_pts``, and the recording's (started_wall, started_mono) anchor maps pts to wall time.

One libx264 encoder runs per recording (rate control and SPS/PPS stay the same across
segments). Keyframes are forced by monotonic time, not frame count, so a dropped frame does
not shift them; B-frames are off so decode order is presentation order and a cut can end at
any frame. A segment ends when the first keyframe at least ``segment_seconds`` after its start
comes out of the encoder, so it always starts on a keyframe whatever the encoder's delay.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from fractions import Fraction
from typing import Any

import av
from av.video.frame import PictureType

from common.clock import Clock
from edge_agent.camera import CameraSource, Frame
from edge_agent.errors import CameraError
from edge_agent.spool import Spool, durable_replace, temp_path

log = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 90_000)


def _cv2() -> Any:
    """OpenCV, imported on first use: ~30 MB that an agent with an encoded camera (RTSP,
    the Pi's hardware encoder) never needs. BGR→I420 with OpenCV is 9x faster than PyAV's."""
    import cv2

    return cv2


CODEC = "h264"


class _Encoder:
    """libx264 via PyAV, fed BGR frames, giving packets whose pts are in ``TIME_BASE``."""

    def __init__(
        self, width: int, height: int, fps: float, *, bitrate: int, preset: str, keyint: int
    ) -> None:
        # A never-written container holds the encoder's stream: segment files are created from
        # it with add_stream_from_template, which needs a Stream, not a bare codec context.
        self._holder = av.open(io.BytesIO(), "w", format="mp4")
        self.stream = self._holder.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.width = width
        self.stream.height = height
        self.stream.pix_fmt = "yuv420p"
        ctx = self.stream.codec_context
        ctx.time_base = TIME_BASE
        ctx.bit_rate = bitrate
        ctx.options = {
            "preset": preset,
            # Frame-count keyint is only a backstop; keyframes are forced by time (see add).
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0",
            "forced-idr": "1",
        }
        ctx.open()
        self.context = ctx
        self.extradata = bytes(ctx.extradata or b"")

    def encode(self, image: av.VideoFrame | None) -> list[av.Packet]:
        return self.context.encode(image)

    def close(self) -> None:
        with contextlib.suppress(av.FFmpegError):
            self._holder.close()


class _SegmentWriter:
    """One segment file in the making, under its temporary name until ``finish``."""

    def __init__(
        self, spool: Spool, encoder: _Encoder, recording_id: int, seq: int, start_pts: int
    ) -> None:
        self.spool = spool
        self.recording_id = recording_id
        self.seq = seq
        self.start_pts = start_pts
        self.frames = 0
        self.final = spool.segment_path(recording_id, seq)
        self.temp = temp_path(self.final)
        self.container = av.open(str(self.temp), "w", format="mp4")
        self.stream = self.container.add_stream_from_template(encoder.stream)
        # add_stream_from_template does not carry the SPS/PPS over (DESIGN.md §4).
        self.stream.codec_context.extradata = encoder.extradata
        self.stream.time_base = TIME_BASE

    def write(self, packet: av.Packet, pts: int, duration: int) -> None:
        packet.pts = packet.dts = pts - self.start_pts
        packet.duration = duration
        packet.time_base = TIME_BASE
        packet.stream = self.stream
        self.container.mux(packet)
        self.frames += 1

    def finish(self, end_pts: int) -> None:
        self.container.close()
        durable_replace(self.temp, self.final)
        self.spool.add_segment(
            self.recording_id,
            seq=self.seq,
            path=self.final,
            start_pts=self.start_pts,
            end_pts=end_pts,
            frames=self.frames,
        )

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()
        self.temp.unlink(missing_ok=True)


class _Recording:
    """One encoder run into the spool, anchored at its first frame (pts 0)."""

    def __init__(self, recorder: Recorder, first: Frame) -> None:
        camera, self.spool = recorder.camera, recorder.spool
        self.fps = camera.fps
        self.frame_ticks = round(1 / (self.fps * TIME_BASE))
        self.key_ticks = round(recorder.keyframe_interval_s / TIME_BASE)
        self.segment_ticks = round(recorder.segment_seconds / TIME_BASE)
        self.on_gap = recorder.on_gap
        self.gap_ticks = round(recorder.gap_threshold_s / TIME_BASE)
        self.width, self.height = camera.width, camera.height
        self.encoder = _Encoder(
            camera.width,
            camera.height,
            camera.fps,
            bitrate=recorder.bitrate,
            preset=recorder.preset,
            keyint=max(1, round(camera.fps * recorder.keyframe_interval_s)),
        )
        self.anchor = first
        self.recording_id = self.spool.begin_recording(
            session_id=recorder.session_id,
            width=camera.width,
            height=camera.height,
            fps=camera.fps,
            codec=CODEC,
            time_base=TIME_BASE,
            extradata=self.encoder.extradata,
            started_wall=first.wall,
            started_mono=first.mono,
        )
        self.info = self.spool.recording(self.recording_id)
        self.last_pts: int | None = None
        self.next_key_pts = 0
        self.seq = 0
        self.writer: _SegmentWriter | None = None
        self.pending: tuple[av.Packet, int] | None = None  # held until its successor's pts is known
        self.end_pts = 0

    def add(self, frame: Frame) -> None:
        """Encode one frame; its pts come from its monotonic time so real gaps stay gaps."""
        pts = round((frame.mono - self.anchor.mono) / TIME_BASE)
        if self.last_pts is not None and pts <= self.last_pts:
            log.debug("dropping frame at %s: not after the previous one", frame.wall)
            return
        if frame.image.shape != (self.height, self.width, 3):
            raise CameraError(
                "recorder",
                f"frame of shape {frame.image.shape} from a {self.width}x{self.height} camera",
            )
        if (
            self.on_gap is not None
            and self.last_pts is not None
            and pts - self.last_pts > self.gap_ticks
        ):
            self.on_gap(self._wall(self.last_pts + self.frame_ticks), self._wall(pts))
        self.last_pts = pts
        # numpy is imported here, with OpenCV, only by an agent that encodes frames itself: an
        # encoded camera (RTSP, stream copy) never loads either.
        import numpy as np

        # OpenCV's I420 conversion is ~9x faster than PyAV's reformat (DESIGN.md §4).
        yuv = np.asarray(_cv2().cvtColor(frame.image, _cv2().COLOR_BGR2YUV_I420), dtype=np.uint8)
        image = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        image.pts = pts
        image.time_base = TIME_BASE
        # Half a frame of slack, so clock jitter cannot push a keyframe one frame late.
        if pts >= self.next_key_pts - self.frame_ticks // 2:
            image.pict_type = PictureType.I
            self.next_key_pts = pts + self.key_ticks
        for packet in self.encoder.encode(image):
            self._on_packet(packet)

    def _on_packet(self, packet: av.Packet) -> None:
        pts = packet.pts
        assert pts is not None
        if self.pending is not None:
            held, held_pts = self.pending
            assert self.writer is not None
            self.writer.write(held, held_pts, pts - held_pts)
        starts_segment = packet.is_keyframe and (
            self.writer is None
            or pts - self.writer.start_pts >= self.segment_ticks - self.frame_ticks // 2
        )
        if starts_segment:
            if self.writer is not None:
                self.writer.finish(end_pts=pts)
                self.seq += 1
            self.writer = _SegmentWriter(self.spool, self.encoder, self.recording_id, self.seq, pts)
        elif self.writer is None:
            log.warning("encoder began without a keyframe; dropping packet at pts %d", pts)
            return
        self.pending = (packet, pts)

    def finish(self) -> None:
        """Flush the encoder, complete the last segment, and close the recording."""
        try:
            for packet in self.encoder.encode(None):
                self._on_packet(packet)
            if self.pending is not None and self.writer is not None:
                held, held_pts = self.pending
                self.writer.write(held, held_pts, self.frame_ticks)
                self.writer.finish(end_pts=held_pts + self.frame_ticks)
                self.end_pts = held_pts + self.frame_ticks
                self.writer = None
        finally:
            if self.writer is not None:
                self.writer.abandon()
            self.encoder.close()
            self.spool.end_recording(self.recording_id, ended_wall=self._wall(self.end_pts))

    def _wall(self, pts: int) -> datetime:
        """Device wall time of ``pts`` as the spool indexes it (as the wall clock is set now,
        when the spool has a timeline: a step since the recording began moves it too)."""
        if self.spool.timeline is None:
            return self.info.wall_at(pts)
        return self.spool.timeline.stamp(self.info.mono_at(pts))[0]


class Recorder:
    """Records a ``CameraSource`` into a ``Spool`` as H.264 segments, one recording per call.

    The recorder opens the camera at the start of each call and closes it at the end. If the
    camera disappears mid-recording, everything captured so far is kept (the last segment
    included) and the ``CameraError`` is re-raised; ``recording_id`` names what was kept.
    ``on_gap(start, end)`` is called for any stretch longer than ``gap_threshold_s`` without
    frames inside a recording (the gap also shows in the pts). ``clock`` is the clock the
    camera paces by; a recording's times come from its frames, which carry that clock's time.
    """

    def __init__(
        self,
        camera: CameraSource,
        spool: Spool,
        clock: Clock,
        *,
        segment_seconds: float = 2.0,
        keyframe_interval_s: float = 1.0,
        bitrate: int = 1_000_000,
        session_id: str | None = None,
        preset: str = "ultrafast",
        on_gap: Callable[[datetime, datetime], None] | None = None,
        gap_threshold_s: float = 1.0,
    ) -> None:
        if keyframe_interval_s <= 0 or segment_seconds < keyframe_interval_s:
            raise ValueError("need 0 < keyframe_interval_s <= segment_seconds")
        self.camera = camera
        self.spool = spool
        self.clock = clock
        self.segment_seconds = segment_seconds
        self.keyframe_interval_s = keyframe_interval_s
        self.bitrate = bitrate
        self.session_id = session_id
        self.preset = preset
        self.on_gap = on_gap
        self.gap_threshold_s = gap_threshold_s
        self.recording_id: int | None = None

    def record_for(self, seconds: float) -> int:
        """Record ``seconds`` of clock time (frames whose offset from the first is below it)."""
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        # Half a frame of slack so float clocks cannot add or lose the boundary frame.
        limit = seconds - 0.5 / self.camera.fps
        return self._record(lambda first, frame: frame.mono - first.mono >= limit, None)

    def run(self, stop: threading.Event) -> int:
        """Record until ``stop`` is set; return the recording id."""
        return self._record(lambda first, frame: False, stop)

    def _record(self, done: Callable[[Frame, Frame], bool], stop: threading.Event | None) -> int:
        self.camera.open()
        recording: _Recording | None = None
        try:
            first = self.camera.read()
            recording = _Recording(self, first)
            self.recording_id = recording.recording_id
            frame = first  # always kept, so every recording has at least one frame
            while True:
                recording.add(frame)
                if stop is not None and stop.is_set():
                    break
                frame = self.camera.read()
                if done(first, frame):
                    break
        finally:
            try:
                if recording is not None:
                    recording.finish()
            finally:
                self.camera.close()
        return recording.recording_id
