"""The Pi's CSI camera through picamera2, encoded by the Pi's own H.264 encoder.

``picamera2`` is imported only inside ``Picamera2Camera.record``: it probes ``/dev/video*`` at
import and cannot be installed off a Pi (it needs libcamera; on a Pi it comes from apt as
``python3-picamera2``, seen by a venv made with ``--system-site-packages``).

picamera2's encoders push their output to ``Output`` objects through a small contract:
``_add_stream(encoder_stream, codec_name, **kw)`` once, ``start()``, then
``outputframe(frame, keyframe, timestamp, packet, audio)`` for each encoded frame from the
encoder's thread, and ``stop()``. ``H264Encoder`` is the hardware V4L2 encoder
(``/dev/video11``) on a Pi 4 and earlier, and an alias of ``LibavH264Encoder`` (libx264) on a
Pi 5, which has none; both hand Annex B access units with SPS/PPS before every IDR
(``repeat=True``) and timestamps in microseconds since the encoder started.

``SpoolOutput`` implements that contract without importing picamera2, and writes the access
units into the spool through the same ``PacketRecorder`` as an RTSP camera: segments switch at
keyframes without dropping a frame (the role picamera2's ``SplittableOutput`` plays for files).
The contract tests drive it with real H.264 exactly as picamera2 would; only the thin adapter
that makes it an ``Output`` subclass, and the camera set-up, need a Pi (docs/hardware-tests.md).
"""

from __future__ import annotations

import logging
import threading
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from common.clock import Clock
from edge_agent.cameras import Backoff, GapCallback, LostCallback, wait_unless_stopped
from edge_agent.cameras.packets import PacketRecorder
from edge_agent.errors import CameraError

if TYPE_CHECKING:
    from edge_agent.spool import Spool

log = logging.getLogger(__name__)

MICROSECONDS = Fraction(1, 1_000_000)
H264_CODECS = ("h264", "h264_v4l2m2m", "libx264")


class SpoolOutput:
    """picamera2's ``Output`` contract, writing the encoder's H.264 into the spool.

    ``stop()`` (picamera2 calls it from ``stop_recording``) finishes the current recording
    cleanly; ``interrupt()`` marks a camera failure, whose outage is reported through
    ``on_gap`` when frames flow again; ``close()`` at the very end. Thread-safe: picamera2
    calls ``outputframe`` from its encoder thread while the agent stops it from another.
    """

    def __init__(
        self,
        spool: Spool,
        clock: Clock,
        *,
        fps: float = 15.0,
        segment_seconds: float = 2.0,
        session_id: str | None = None,
        on_gap: GapCallback | None = None,
        max_skew_s: float = 1.0,
        name: str = "picamera2",
    ) -> None:
        self.recording = False
        self.clock = clock
        self.frames_in = 0
        self.last_frame_mono: float | None = None
        self.codec: str | None = None
        self._lock = threading.Lock()
        self.recorder = PacketRecorder(
            spool,
            clock,
            time_base=MICROSECONDS,
            segment_seconds=segment_seconds,
            session_id=session_id,
            on_gap=on_gap,
            max_skew_s=max_skew_s,
            fps_hint=fps,
            name=name,
        )

    @property
    def recording_ids(self) -> list[int]:
        return self.recorder.recording_ids

    def _add_stream(self, encoder_stream: Any, codec_name: str, **kwargs: Any) -> None:
        """picamera2 names the stream its encoder produces before ``start``."""
        if codec_name not in H264_CODECS:
            raise CameraError("picamera2", f"encoder makes {codec_name}, not H.264")
        self.codec = codec_name

    def start(self) -> None:
        """The encoder is starting: accept frames."""
        with self._lock:
            self.recording = True

    def outputframe(
        self,
        frame: bytes | None,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        """One encoded frame: Annex B bytes, whether it is a keyframe, its time in µs."""
        if audio:
            return  # no microphone in a classroom box; picamera2 only sends audio if asked
        data = bytes(frame) if frame is not None else bytes(packet) if packet is not None else b""
        if timestamp is None and packet is not None and packet.pts is not None:
            timestamp = round(packet.pts * packet.time_base / MICROSECONDS)
        with self._lock:
            if not self.recording or not data:
                return
            self.frames_in += 1
            self.last_frame_mono = self.clock.monotonic()
            self.recorder.write(data, timestamp, keyframe)

    def stop(self) -> None:
        """The encoder stopped: finish the current recording (its last segment included)."""
        with self._lock:
            self.recording = False
            self.recorder.end_stream()

    def interrupt(self) -> None:
        """The camera failed: keep what was recorded and open an outage."""
        with self._lock:
            self.recording = False
            self.recorder.interrupt()

    def close(self) -> None:
        """The end: an outage still open is reported as lasting until now."""
        with self._lock:
            self.recording = False
            self.recorder.close()


def _as_picamera2_output(target: SpoolOutput) -> Any:
    """``target`` wrapped in a real ``picamera2.outputs.Output`` subclass, which picamera2's
    encoders insist on (``isinstance`` check in ``Encoder.output``)."""
    from picamera2.outputs import Output

    class _SpoolAdapter(Output):
        def start(self) -> None:
            super().start()
            target.start()

        def stop(self) -> None:
            super().stop()
            target.stop()

        def outputframe(
            self,
            frame: bytes | None,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: Any = None,
            audio: bool = False,
        ) -> None:
            target.outputframe(frame, keyframe, timestamp, packet, audio)

        def _add_stream(self, encoder_stream: Any, codec_name: str, **kwargs: Any) -> None:
            target._add_stream(encoder_stream, codec_name, **kwargs)

    return _SpoolAdapter()


class Picamera2Camera:
    """The CSI camera with the Pi's H.264 encoder, recorded by stream copy (``EncodedCamera``).

    ``keyframe_interval_s`` sets the encoder's IDR period (1 s: cut bounds exact to a second).
    If no frame arrives for ``stall_timeout_s`` (a loose ribbon cable, libcamera failing) the
    camera is closed and reopened with backoff, and the outage is reported.
    """

    def __init__(
        self,
        *,
        width: int = 1280,
        height: int = 720,
        fps: float = 15.0,
        clock: Clock,
        bitrate: int = 1_000_000,
        keyframe_interval_s: float = 1.0,
        camera_num: int = 0,
        stall_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = f"picamera2:{camera_num}"
        self.width, self.height, self.fps = width, height, fps
        self.clock = clock
        self.bitrate = bitrate
        self.iperiod = max(1, round(fps * keyframe_interval_s))
        self.camera_num = camera_num
        self.stall_timeout_s = stall_timeout_s
        self.backoff = backoff or Backoff(initial_s=1.0, cap_s=60.0)
        self.restarts = 0

    def record(
        self,
        spool: Spool,
        stop: threading.Event,
        *,
        segment_seconds: float = 2.0,
        session_id: str | None = None,
        on_gap: GapCallback | None = None,
        on_lost: LostCallback | None = None,
    ) -> list[int]:
        """Record until ``stop`` is set, restarting a stalled camera; return the recording ids."""
        output = SpoolOutput(
            spool,
            self.clock,
            fps=self.fps,
            segment_seconds=segment_seconds,
            session_id=session_id,
            on_gap=on_gap,
            name=self.name,
        )
        frames_at_loss: int | None = None  # output.frames_in when the open outage began
        try:
            while not stop.is_set():
                try:
                    self._run_once(output, stop)
                    if stop.is_set():
                        break
                    raise CameraError(self.name, f"no frame for {self.stall_timeout_s:g} s")
                except CameraError as exc:
                    output.interrupt()
                    new_outage = frames_at_loss is None or output.frames_in > frames_at_loss
                    if new_outage and on_lost is not None:
                        on_lost(exc.why)
                    frames_at_loss = output.frames_in
                    self.restarts += 1
                    delay = self.backoff.next_delay()
                    log.warning("%s: %s; restarting in %.1f s", self.name, exc.why, delay)
                    wait_unless_stopped(self.clock, stop, delay)
        finally:
            output.close()
        return output.recording_ids

    def _run_once(self, output: SpoolOutput, stop: threading.Event) -> None:
        """Run the camera until ``stop`` (return) or a stall (return with stop unset)."""
        try:
            from picamera2 import Picamera2
            from picamera2.encoders import H264Encoder
        except ImportError as exc:  # not a Pi, or apt's python3-picamera2 not visible
            raise CameraError(
                self.name,
                "picamera2 is not importable: on a Pi, apt install python3-picamera2 and make "
                f"the venv with --system-site-packages ({exc})",
            ) from exc
        try:
            picam2 = Picamera2(self.camera_num)
        except (RuntimeError, IndexError, OSError) as exc:
            raise CameraError(self.name, f"cannot open the camera: {exc}") from exc
        try:
            frame_us = round(1_000_000 / self.fps)
            config = picam2.create_video_configuration(
                main={"size": (self.width, self.height), "format": "YUV420"},
                # A fixed frame duration: the sensor would otherwise slow down in a dim room.
                controls={"FrameDurationLimits": (frame_us, frame_us)},
            )
            picam2.configure(config)
            # repeat: SPS/PPS before every IDR, so each segment decodes on its own.
            encoder = H264Encoder(bitrate=self.bitrate, repeat=True, iperiod=self.iperiod)
            started = self.clock.monotonic()
            picam2.start_recording(encoder, _as_picamera2_output(output))
            try:
                # Not ``while not stop.wait(0.5)``: a clock change may wake a wait on ``stop``
                # with it still clear (common.clock.ClockChanges).
                while not (stop.wait(0.5) and stop.is_set()):
                    last = output.last_frame_mono or started
                    if self.clock.monotonic() - last > self.stall_timeout_s:
                        return
                    if output.last_frame_mono is not None:
                        self.backoff.reset()
            finally:
                picam2.stop_recording()
        except (RuntimeError, OSError) as exc:
            raise CameraError(self.name, f"camera failed: {exc}") from exc
        finally:
            picam2.close()
