"""Recording an already-encoded H.264 stream into the spool by stream copy: no re-encoding.

An IP camera (RTSP) and the Pi's hardware encoder (picamera2) both hand us H.264 access units
(Annex B byte strings) with their own timestamps, not pictures. ``PacketRecorder`` writes them
into the same spool the frame ``Recorder`` fills, in the same shape, so ``cut_window`` works
unchanged: MP4 segment files that start on an IDR frame, 90 kHz pts, one spool recording per
continuous run, anchored by the wall and monotonic time of its pts 0.

Why it is built the way it is:

* A segment is collected in memory and written whole when it closes (at the first IDR at least
  ``segment_seconds`` after its start, so it lasts a whole number of the camera's GOPs). That
  is exactly as durable as writing a ``.part`` file as we go (the spool drops those after a
  power cut anyway), and it lets the first segment of a recording choose its time anchor.
* The anchor comes from arrival times, not from the camera's clock: for each access unit
  ``arrival_mono - pts`` is the camera-to-agent delay plus an unknown constant; its minimum over
  the first segment is the least-delayed mapping, so a burst of buffered packets (RTSP probing,
  a 4G stall) does not make the recording look later than it was. Every later segment is
  checked against that mapping. A camera's crystal drifts (±100 ppm is ~0.4 s a class), so
  the mapping is slewed at segment boundaries, at most half a frame each time (one frame
  shows 1/30 s longer or shorter; drift of up to 1.5 % is followed). A jump beyond
  ``max_skew_s`` (a camera glitch) starts a new recording with a fresh anchor, never
  earlier than the previous one ended (the cutter joins recordings with identical stream
  parameters on one timeline, and must not find them overlapping).
* SPS/PPS come from the first IDR's own in-band parameter sets (what the decoder will really
  use), else from the SDP / encoder extradata. They are stored per recording; a keyframe with
  different parameter sets (the camera's settings changed) starts a new recording.
* The MP4 muxer converts Annex B to length-prefixed NAL units; the NAL units themselves are
  copied byte for byte.
"""

from __future__ import annotations

import io
import itertools
import logging
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av
from av.container import InputContainer

from common.clock import Clock
from edge_agent.cameras import GapCallback
from edge_agent.cameras.h264 import is_idr, parameter_sets
from edge_agent.errors import CameraError
from edge_agent.recorder import CODEC, TIME_BASE
from edge_agent.spool import RecordingInfo, Spool, durable_replace, temp_path

log = logging.getLogger(__name__)

# Below this the camera and our clock agree well enough (LAN jitter); no slewing.
SLEW_DEADBAND_S = 0.02


class UnsupportedStream(CameraError):
    """The camera sends something we cannot stream-copy into the spool (not H.264, B-frames).

    Reconnecting does not help: the camera's encoder settings must change.
    """


@dataclass(slots=True)
class _Unit:
    data: bytes
    pts: int  # the source's own pts, in its time base
    keyframe: bool
    wall: datetime  # when it reached us
    mono: float


@dataclass
class _Stream:
    """One continuous run of the source; it maps onto one spool recording (or more, if the
    camera's time jumps and the run is re-anchored)."""

    pts0: int  # source pts of recording pts 0 (its first IDR)
    extradata: bytes
    template: InputContainer  # holds the stream the segment files are templated on
    width: int
    height: int
    segment: list[_Unit] = field(default_factory=list)
    info: RecordingInfo | None = None  # set when its first segment is written
    seq: int = 0
    offset: int = 0  # slew correction added to the camera's ticks
    end_ticks: int | None = None  # where the last written segment ends, recording-relative
    last_ticks: int | None = None  # where its last frame starts


def _typical_step(ticks: list[int]) -> int | None:
    """The usual distance between frames (the median, so one stall does not skew it)."""
    steps = [b - a for a, b in itertools.pairwise(ticks) if b > a]
    return statistics.median_low(steps) if steps else None


class PacketRecorder:
    """Writes H.264 access units from a camera into a ``Spool`` as keyframe-aligned segments.

    Feed it with ``write(data, pts, keyframe)`` as units arrive (``pts`` in ``time_base``);
    ``interrupt()`` when the source is lost (the outage is reported through ``on_gap(start,
    end)`` once the source is back, or at ``close()``); ``end_stream()`` to finish the current
    recording cleanly; ``close()`` at the end. One feeding thread at a time.
    """

    def __init__(
        self,
        spool: Spool,
        clock: Clock,
        *,
        time_base: Fraction,
        segment_seconds: float = 2.0,
        session_id: str | None = None,
        on_gap: GapCallback | None = None,
        gap_threshold_s: float = 1.0,
        max_skew_s: float = 1.0,
        fps_hint: float = 15.0,
        name: str = "camera",
    ) -> None:
        if segment_seconds <= 0 or max_skew_s <= 0 or fps_hint <= 0:
            raise ValueError("segment_seconds, max_skew_s and fps_hint must be positive")
        self.spool = spool
        self.clock = clock
        self.time_base = time_base
        self.segment_ticks = round(segment_seconds / TIME_BASE)
        self.session_id = session_id
        self.on_gap = on_gap
        self.gap_ticks = round(gap_threshold_s / TIME_BASE)
        self.max_skew_s = max_skew_s
        self.default_step = round(1 / (fps_hint * TIME_BASE))
        self.fps_hint = fps_hint
        self.name = name
        self.recording_ids: list[int] = []
        self.units_written = 0
        self.units_dropped = 0  # before the first IDR of a run: not decodable on their own
        self._stream: _Stream | None = None
        self._pending: _Unit | None = None  # held until a unit with another pts arrives
        self._orphan = b""  # a timestamp-less part of the next access unit
        self._extradata = b""
        self._outage_start: datetime | None = None

    # -- feeding --------------------------------------------------------------------------

    def write(self, data: bytes, pts: int | None, keyframe: bool, extradata: bytes = b"") -> None:
        """Take one access unit, or a part of one, as it arrives.

        A part with the same ``pts`` as the previous one (a frame split across packets, as an
        RTSP depacketizer does with multi-slice frames) or with no pts is joined to its frame.
        ``extradata`` (Annex B SPS/PPS, e.g. from the SDP) is used when an IDR carries none.
        """
        if extradata:
            self._extradata = extradata
        if not data:
            return
        if pts is None:
            if self._pending is not None:
                self._pending.data += data
            else:
                self._orphan += data
            return
        if self._pending is not None and pts == self._pending.pts:
            self._pending.data += data
            self._pending.keyframe = self._pending.keyframe or keyframe
            return
        unit = _Unit(self._orphan + data, pts, keyframe, self.clock.now(), self.clock.monotonic())
        self._orphan = b""
        held, self._pending = self._pending, unit
        if held is not None:
            self._commit(held)

    def end_stream(self) -> None:
        """Write what is held and finish the current recording (a clean stop)."""
        held, self._pending, self._orphan = self._pending, None, b""
        if held is not None:
            self._commit(held)
        self._finish_stream()

    def interrupt(self) -> None:
        """The source was lost: keep everything received so far, and open an outage."""
        self.end_stream()
        if self._outage_start is None:
            ended = None
            if self.recording_ids:
                ended = self.spool.recording(self.recording_ids[-1]).ended_wall
            self._outage_start = ended or self.clock.now()

    def close(self) -> None:
        """Finish; an outage still open is reported as lasting until now."""
        self.end_stream()
        if self._outage_start is not None:
            self._report_gap(self._outage_start, self.clock.now())
            self._outage_start = None

    # -- inside ---------------------------------------------------------------------------

    def _ticks(self, stream: _Stream, pts: int) -> int:
        """Recording-relative 90 kHz ticks of a source pts (integer maths, rounded)."""
        num = (pts - stream.pts0) * self.time_base.numerator * TIME_BASE.denominator
        den = self.time_base.denominator * TIME_BASE.numerator
        return (2 * num + den) // (2 * den) + stream.offset

    def _commit(self, unit: _Unit) -> None:
        idr = unit.keyframe and is_idr(unit.data)
        stream = self._stream
        if stream is not None and stream.segment:
            ticks = self._ticks(stream, unit.pts)
            last = stream.segment[-1]
            previous = self._ticks(stream, last.pts)
            leap = float((ticks - previous) * TIME_BASE) - (unit.mono - last.mono)
            # Backwards, or far ahead of the time that passed (a camera glitch: a network
            # stall only ever delays arrivals): what follows cannot continue this timeline.
            if ticks <= previous or leap > self.max_skew_s:
                log.warning("%s: camera time jumped (%d after %d)", self.name, ticks, previous)
                self._finish_stream()
                stream = None
            elif idr and parameter_sets(unit.data) not in (b"", stream.extradata):
                log.info("%s: stream parameters changed: new recording", self.name)
                self._finish_stream()
                stream = None
            elif idr and ticks - self._ticks(stream, stream.segment[0].pts) >= (
                self.segment_ticks - self.default_step // 2
            ):
                self._flush_segment(stream, next_pts=unit.pts)
        if stream is None:
            if not idr:
                self.units_dropped += 1
                return
            stream = self._stream = self._open_stream(unit)
        stream.segment.append(unit)

    def _open_stream(self, unit: _Unit) -> _Stream:
        params = parameter_sets(unit.data) or parameter_sets(self._extradata)
        if not params:
            raise UnsupportedStream(self.name, "no SPS/PPS in the first keyframe nor the SDP")
        # The raw H.264 demuxer over the first IDR gives a real stream to template the segment
        # files on (size, profile, pixel format) without us parsing an SPS.
        try:
            template = av.open(io.BytesIO(params + unit.data), format="h264")
        except av.FFmpegError as exc:
            raise CameraError(self.name, f"first keyframe does not parse: {exc}") from exc
        assert isinstance(template, InputContainer)
        ctx = template.streams.video[0].codec_context
        if not ctx.width or not ctx.height:
            template.close()
            raise CameraError(self.name, "first keyframe has no picture size")
        return _Stream(unit.pts, params, template, ctx.width, ctx.height)

    def _finish_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            if stream.segment:
                self._flush_segment(stream, next_pts=None)
            self._end_recording(stream)
        finally:
            stream.template.close()

    def _flush_segment(self, stream: _Stream, next_pts: int | None) -> None:
        """Write the segment held in memory; it ends where ``next_pts`` (the IDR that starts
        the next one) begins, or one frame after its last frame at the end of a stream."""
        units, stream.segment = stream.segment, []
        not_before = None
        lag = self._min_lag(stream, units)
        if stream.info is not None and abs(lag) > self.max_skew_s:
            log.warning("%s: camera time off by %.2f s: re-anchoring", self.name, lag)
            not_before = self._end_recording(stream)
            stream.pts0, stream.offset, stream.info, stream.seq = units[0].pts, 0, None, 0
            stream.end_ticks = stream.last_ticks = None
        ticks = [self._ticks(stream, u.pts) for u in units]
        step = _typical_step(ticks) or self.default_step
        if stream.info is None:
            stream.info = self._begin_recording(stream, units, ticks, not_before)
        elif next_pts is not None and abs(lag) > SLEW_DEADBAND_S:
            # Slew the next segment's times towards arrival; this one's last frame absorbs it.
            stream.offset += max(-step // 2, min(step // 2, round(lag / TIME_BASE)))
        end_ticks = ticks[-1] + step if next_pts is None else self._ticks(stream, next_pts)
        info = stream.info
        self._report_stalls(info, stream.last_ticks, ticks)
        path = self.spool.segment_path(info.recording_id, stream.seq)
        self._write_mp4(stream, path, units, ticks, end_ticks)
        self.spool.add_segment(
            info.recording_id,
            seq=stream.seq,
            path=path,
            start_pts=ticks[0],
            end_pts=end_ticks,
            frames=len(units),
        )
        stream.seq += 1
        stream.end_ticks, stream.last_ticks = end_ticks, ticks[-1]
        self.units_written += len(units)

    def _min_lag(self, stream: _Stream, units: list[_Unit]) -> float:
        """Seconds by which the units arrived after the recording's mapping says they were
        made (the least-delayed one); negative means the mapping runs ahead of our clock."""
        if stream.info is None:
            return 0.0
        return min(u.mono - stream.info.mono_at(self._ticks(stream, u.pts)) for u in units)

    def _end_recording(self, stream: _Stream) -> datetime | None:
        info = stream.info
        if info is None or stream.end_ticks is None:
            return None
        ended = info.wall_at(stream.end_ticks)
        self.spool.end_recording(info.recording_id, ended_wall=ended)
        return ended

    def _begin_recording(
        self,
        stream: _Stream,
        units: list[_Unit],
        ticks: list[int],
        not_before: datetime | None = None,
    ) -> RecordingInfo:
        # pts 0 is where the least-delayed unit says it is (see the module docstring).
        best = min(range(len(units)), key=lambda i: units[i].mono - ticks[i] / 90_000)
        seconds = float(ticks[best] * TIME_BASE)
        wall = units[best].wall - timedelta(seconds=seconds)
        if not_before is not None and wall < not_before:
            seconds -= (not_before - wall).total_seconds()
            wall = not_before
        step = _typical_step(ticks)
        rid = self.spool.begin_recording(
            session_id=self.session_id,
            width=stream.width,
            height=stream.height,
            fps=round(1 / float(step * TIME_BASE), 3) if step else self.fps_hint,
            codec=CODEC,
            time_base=TIME_BASE,
            extradata=stream.extradata,
            started_wall=wall,
            started_mono=units[best].mono - seconds,
        )
        self.recording_ids.append(rid)
        if self._outage_start is not None:
            self._report_gap(self._outage_start, wall)
            self._outage_start = None
        return self.spool.recording(rid)

    def _report_stalls(self, info: RecordingInfo, previous: int | None, ticks: list[int]) -> None:
        """A jump in the camera's own pts longer than the threshold is a gap in the video."""
        step = _typical_step(ticks) or self.default_step
        for here in ticks:
            if previous is not None and here - previous > self.gap_ticks:
                self._report_gap(info.wall_at(previous + step), info.wall_at(here))
            previous = here

    def _report_gap(self, start: datetime, end: datetime) -> None:
        if end <= start:
            return
        log.warning("%s: no video from %s to %s", self.name, start.isoformat(), end.isoformat())
        if self.on_gap is not None:
            self.on_gap(start, end)

    def _write_mp4(
        self, stream: _Stream, final: Path, units: list[_Unit], ticks: list[int], end_ticks: int
    ) -> None:
        temp = temp_path(final)
        base = ticks[0]
        try:
            with av.open(str(temp), "w", format="mp4") as out:
                video = out.add_stream_from_template(stream.template.streams.video[0])
                # add_stream_from_template does not carry the SPS/PPS over (DESIGN.md §4).
                video.codec_context.extradata = stream.extradata
                video.time_base = TIME_BASE
                for i, unit in enumerate(units):
                    after = ticks[i + 1] if i + 1 < len(units) else end_ticks
                    packet = av.Packet(unit.data)
                    packet.pts = packet.dts = ticks[i] - base
                    packet.duration = max(1, after - ticks[i])
                    packet.time_base = TIME_BASE
                    packet.is_keyframe = i == 0 or (unit.keyframe and is_idr(unit.data))
                    packet.stream = video
                    out.mux(packet)
            durable_replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
