"""An IP camera over RTSP, recorded by stream copy: its own H.264, never decoded or re-encoded.

PyAV (FFmpeg's RTSP client) demuxes the camera's H.264 over TCP (RTP interleaved in the RTSP
connection: one TCP flow that survives NAT and packet loss, unlike RTP over UDP). Each packet is
handed to ``PacketRecorder`` as it arrives, so segments start on the camera's own IDR frames
and the spool's times come from the packets' pts, anchored at arrival.

When the stream drops (EOF, socket timeout, the camera rebooting) everything received is kept,
the connection is retried with capped, jittered exponential backoff, and the outage is reported
through ``on_gap(start, end)`` when video is back. Each connection is a new spool recording
(the camera restarts its timestamps); the cutter joins them on one timeline.

Not supported, by design (``UnsupportedStream``, no retry): H.265 and other codecs, and
B-frames (the spool and cutter keep decode order = presentation order). Set the camera's main
stream to H.264 without B-frames, GOP 1–2 s: most IP cameras default to exactly that.
"""

from __future__ import annotations

import logging
import threading
from fractions import Fraction
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

import av

from common.clock import Clock
from edge_agent.cameras import Backoff, GapCallback, LostCallback, wait_unless_stopped
from edge_agent.cameras.packets import PacketRecorder, UnsupportedStream
from edge_agent.errors import CameraError

if TYPE_CHECKING:
    from edge_agent.spool import Spool

log = logging.getLogger(__name__)


def url_with_password(url: str, password: str) -> str:
    """``url`` with ``password`` put into its userinfo (the user stays the one the url names),
    so the password can live in a credential file rather than the config."""
    parts = urlsplit(url)
    if not parts.username:
        raise CameraError(redact(url), "a password needs a user in the url (rtsp://user@host/...)")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(parts.username, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact(url: str) -> str:
    """``url`` without its password, for names and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


class RtspCamera:
    """An H.264 IP camera at an ``rtsp://`` url, recorded by stream copy (``EncodedCamera``).

    ``open_timeout_s`` bounds connecting and reading the SDP; ``read_timeout_s`` bounds silence
    on an open stream (a camera that lost power sends no FIN, so only a timeout notices). After
    a connection that lasted ``healthy_after_s`` the backoff starts again from its minimum.
    ``connects``, ``outages``, ``failures`` (connection attempts or streams that failed) and
    ``reconnect_delays`` are kept for tests and heartbeats.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        transport: str = "tcp",
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        healthy_after_s: float = 10.0,
        max_skew_s: float = 1.0,
        fps_hint: float = 15.0,
        gap_threshold_s: float = 1.0,
    ) -> None:
        if transport not in ("tcp", "udp"):
            raise ValueError(f"rtsp transport must be tcp or udp, got {transport!r}")
        self.url = url
        self.name = f"rtsp:{redact(url)}"
        self.clock = clock
        self.transport = transport
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.backoff = backoff or Backoff(initial_s=0.5, cap_s=30.0)
        self.healthy_after_s = healthy_after_s
        self.max_skew_s = max_skew_s
        self.fps_hint = fps_hint
        self.gap_threshold_s = gap_threshold_s
        self.connects = 0
        self.outages = 0
        self.failures = 0
        self.reconnect_delays: list[float] = []
        self.attempt_times: list[float] = []  # clock.monotonic() of each connection attempt
        self.packets_received = 0
        self.bytes_received = 0
        self._lost = False

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
        """Record until ``stop`` is set, reconnecting with backoff; return the recording ids.

        ``on_lost(reason)`` when an outage begins; ``on_gap(start, end)`` when video is back
        after it (or at the stop), and for stalls in the camera's own timestamps. Raises
        ``UnsupportedStream`` (after keeping what was recorded) if the camera's stream cannot
        be stream-copied; any other camera failure is retried.
        """
        recorder = PacketRecorder(
            spool,
            self.clock,
            time_base=Fraction(1, 90_000),  # replaced by the stream's own at connect
            segment_seconds=segment_seconds,
            session_id=session_id,
            on_gap=on_gap,
            gap_threshold_s=self.gap_threshold_s,
            max_skew_s=self.max_skew_s,
            fps_hint=self.fps_hint,
            name=self.name,
        )
        self._lost = False
        try:
            while not stop.is_set():
                try:
                    self._stream_once(recorder, stop)
                except UnsupportedStream:
                    raise
                except CameraError as exc:
                    self.failures += 1
                    recorder.interrupt()
                    if not self._lost:
                        self._lost = True
                        self.outages += 1
                        if on_lost is not None:
                            on_lost(exc.why)
                    delay = self.backoff.next_delay()
                    self.reconnect_delays.append(delay)
                    log.warning("%s: %s; reconnecting in %.1f s", self.name, exc.why, delay)
                    wait_unless_stopped(self.clock, stop, delay)
        finally:
            recorder.close()
        return recorder.recording_ids

    def _open(self) -> av.container.InputContainer:
        options = {
            "rtsp_transport": self.transport,
            # FFmpeg's socket I/O timeout, in microseconds: a silent camera is an error.
            "timeout": str(round(self.read_timeout_s * 1_000_000)),
            # Start at once instead of buffering seconds of packets to probe a stream whose
            # parameters the SDP already gives (the anchor would cope, but why wait).
            "analyzeduration": "0",
            "probesize": "32",
        }
        self.attempt_times.append(self.clock.monotonic())
        try:
            container = av.open(
                self.url, options=options, timeout=(self.open_timeout_s, self.read_timeout_s)
            )
        except (av.FFmpegError, OSError) as exc:
            raise CameraError(self.name, f"cannot connect: {exc}") from exc
        assert isinstance(container, av.container.InputContainer)
        return container

    def _stream_once(self, recorder: PacketRecorder, stop: threading.Event) -> None:
        """One connection: demux until ``stop`` (return) or until the stream fails (raise)."""
        container = self._open()
        try:
            if not container.streams.video:
                raise UnsupportedStream(self.name, "the stream has no video")
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            if codec != "h264":
                raise UnsupportedStream(self.name, f"codec {codec}: set the camera to H.264")
            recorder.time_base = stream.time_base or Fraction(1, 90_000)
            extradata = bytes(stream.codec_context.extradata or b"")
            self.connects += 1
            connected = self.clock.monotonic()
            log.info("%s: connected (%dx%d)", self.name, stream.width, stream.height)
            try:
                for packet in container.demux(stream):
                    if packet.size == 0:  # the demuxer's end-of-stream flush packet
                        continue
                    if (
                        packet.pts is not None
                        and packet.dts is not None
                        and packet.dts != packet.pts
                    ):
                        raise UnsupportedStream(self.name, "B-frames: turn them off in the camera")
                    self.packets_received += 1
                    self._lost = False
                    self.bytes_received += packet.size
                    recorder.write(bytes(packet), packet.pts, packet.is_keyframe, extradata)
                    if (
                        self.backoff.attempt
                        and self.clock.monotonic() - connected > self.healthy_after_s
                    ):
                        self.backoff.reset()
                    if stop.is_set():
                        recorder.end_stream()
                        return
            except av.FFmpegError as exc:
                raise CameraError(self.name, f"stream failed: {exc}") from exc
            raise CameraError(self.name, "the camera ended the stream")
        finally:
            container.close()
