"""Cutting a server-time window out of the spool into one MP4, by stream copy (DESIGN.md §1.4).

Windows are in server UTC and are found by each segment's server time (its device time minus
the clock offset when it was indexed), so a wall-clock step during the recording does not
move the footage away from the window. The clip's bounds are reported in device time with
the one offset they were mapped with (``CutResult.clock_offset_s``): ``cut_start -
clock_offset_s`` is the server time of the first frame, so a skew stays visible.

No re-encoding: packets are copied byte for byte from the segment files, from the last
keyframe at or before the window's start through the last frame that starts before its end.
With a keyframe every second the cut starts at most one second early, and needs no edit list.

Output pts start at 0 (90 kHz, like the spool). The absolute time of frame 0 is written into
the MP4 twice: ``creation_time`` (which MP4 stores to the whole second only) and ``comment``
= ``classcam cut_start=<ISO8601 µs> cut_end=<ISO8601 µs> recordings=<ids>``, parsable with
``parse_cut_comment``.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av

from common.clock import to_utc
from edge_agent.errors import CutError
from edge_agent.spool import RecordingInfo, SegmentInfo, Spool, durable_replace, temp_path

OUTPUT_TIME_BASE = Fraction(1, 90_000)
# Opening a segment only to copy its packets: libavformat's stream-info probe otherwise opens an
# H.264 decoder and decodes up to 7 frames of every file (three quarters of a cut's time), to
# learn what the first segment's fully probed stream already tells (same recording parameters,
# _choose_recordings). With no decoder allowed and the least probing, it reads the header only
# (FFmpeg's log, off in PyAV, would say the codec could not be opened); the packets are the same.
_PACKETS_ONLY = {"codec_whitelist": "none", "probesize": "32", "analyzeduration": "1"}
_MICROSECOND = timedelta(microseconds=1)
_COMMENT = re.compile(r"classcam cut_start=(\S+) cut_end=(\S+)")


@dataclass(frozen=True)
class CutResult:
    """A finished clip and the device-clock bounds it really covers."""

    path: Path
    cut_start: datetime  # device time of the first frame (a keyframe)
    cut_end: datetime  # device time of the last frame plus its duration
    duration_s: float
    frames: int
    width: int
    height: int
    codec: str
    recording_ids: tuple[int, ...] = ()
    clock_offset_s: float = 0.0  # device minus server clock the bounds were mapped with


@dataclass
class _Picked:
    packet: av.Packet
    server: datetime  # server time of this frame
    offset_s: float  # device minus server clock of its segment
    ticks: int  # output pts before shifting to 0, in OUTPUT_TIME_BASE
    duration: int


def _iso(value: datetime) -> str:
    return to_utc(value).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_cut_comment(comment: str) -> tuple[datetime, datetime] | None:
    """``(cut_start, cut_end)`` from a clip's ``comment`` metadata, or None if absent."""
    match = _COMMENT.search(comment)
    if match is None:
        return None
    return tuple(  # type: ignore[return-value]
        datetime.fromisoformat(part.replace("Z", "+00:00")) for part in match.groups()
    )


def _rescaler(source: Fraction, target: Fraction) -> Callable[[int], int]:
    """Converts a count of ``source`` units to ``target`` units, rounded."""
    if source == target:
        return lambda value: value  # the spool, its files and the output all use 90 kHz
    return lambda value: round(value * source / target)


def _microseconds(time_base: Fraction) -> Callable[[int], int]:
    """Converts pts in ``time_base`` to whole microseconds, rounded half up."""
    num, den = time_base.numerator * 1_000_000, time_base.denominator
    return lambda pts: (2 * pts * num + den) // (2 * den)


def _choose_recordings(
    spool: Spool, segments: list[SegmentInfo], start: datetime, end: datetime, fallback: float
) -> list[RecordingInfo]:
    """The recordings to cut from: the one covering most of the window, plus any other with
    identical stream parameters (so one MP4 track can hold them; the gap shows in the pts)."""
    overlap: dict[int, timedelta] = defaultdict(timedelta)
    for seg in segments:
        seg_start, seg_end = seg.server_span(fallback)
        overlap[seg.recording_id] += min(seg_end, end) - max(seg_start, start)
    infos = {rid: spool.recording(rid) for rid in overlap}
    best = infos[max(overlap, key=lambda rid: (overlap[rid], -rid))]

    def same_stream(info: RecordingInfo) -> bool:
        return (info.codec, info.width, info.height, info.extradata) == (
            best.codec,
            best.width,
            best.height,
            best.extradata,
        )

    return [i for i in infos.values() if same_stream(i)]


def _pick_packets(
    segments: list[SegmentInfo],
    recordings: list[RecordingInfo],
    start: datetime,
    end: datetime,
    fallback: float,
    stack: contextlib.ExitStack,
) -> tuple[list[_Picked], av.VideoStream | None, bytes]:
    """Packets from the last keyframe at or before ``start`` to the last frame before ``end``
    (all server time).

    The segment files stay open on ``stack`` until the clip is written: the packets, and the
    stream used as the output's template, belong to them. The template is the first segment's
    stream, the only one probed in full (width, height and pixel format come from decoding its
    first frames; the segment files' own headers do not carry them reliably).
    """
    by_id = {r.recording_id: r for r in recordings}
    picked: list[_Picked] = []
    extradata = b""
    template: av.VideoStream | None = None
    first_zero: datetime | None = None
    bases: dict[int, int] = {}
    for seg in segments:
        rec = by_id.get(seg.recording_id)
        if rec is None:
            continue
        seg_server, _ = seg.server_span(fallback)
        offset = seg.offset_s if seg.offset_s is not None else fallback
        # Server time of this recording's pts 0, by this segment.
        zero = seg_server - _pts_delta(rec, seg.start_pts)
        if first_zero is None:
            first_zero = zero
        # Place every recording on one timeline by its server anchor, in output ticks; within
        # a recording the pts (monotonic time) alone order the frames.
        base = bases.setdefault(
            rec.recording_id, round((zero - first_zero).total_seconds() / OUTPUT_TIME_BASE)
        )
        options = _PACKETS_ONLY if template is not None else None
        container = stack.enter_context(av.open(str(seg.path), format="mp4", options=options))
        stream = container.streams.video[0]
        tb = stream.time_base or OUTPUT_TIME_BASE
        if template is None:
            template = stream
            extradata = bytes(stream.codec_context.extradata or b"")
        # Per packet, integers only: the window's bounds as microseconds after the segment's
        # server start, compared with each frame's (exactly the datetime comparison).
        to_rec, to_output = _rescaler(tb, rec.time_base), _rescaler(tb, OUTPUT_TIME_BASE)
        rec_to_output, rec_us = (
            _rescaler(rec.time_base, OUTPUT_TIME_BASE),
            _microseconds(rec.time_base),
        )
        start_us, end_us = (start - seg_server) // _MICROSECOND, (end - seg_server) // _MICROSECOND
        for packet in container.demux(stream):
            pts = packet.pts
            if pts is None or packet.size == 0:
                continue
            rel_pts = to_rec(pts)  # in the recording's time base, after the segment's start
            us = rec_us(rel_pts)
            if us >= end_us:
                break
            ticks = base + rec_to_output(seg.start_pts + rel_pts)
            keyframe = packet.is_keyframe
            if us <= start_us and keyframe:
                picked.clear()  # a later keyframe at or before start: begin there instead
            elif (us < start_us or not keyframe) and not picked:
                continue  # nothing decodable yet
            elif picked and ticks <= picked[-1].ticks:
                continue  # overlapping recordings: keep the timeline monotonic
            server = seg_server + timedelta(microseconds=us)
            picked.append(_Picked(packet, server, offset, ticks, to_output(packet.duration or 0)))
    # Durations follow the next packet's pts where there is one (exact across segments).
    for here, after in itertools.pairwise(picked):
        here.duration = after.ticks - here.ticks
    if picked and picked[-1].duration <= 0:
        picked[-1].duration = round(1 / (recordings[0].fps * OUTPUT_TIME_BASE))
    return picked, template, extradata


def _pts_delta(rec: RecordingInfo, pts: int) -> timedelta:
    return timedelta(microseconds=_microseconds(rec.time_base)(pts))


def cut_window(
    spool: Spool,
    start: datetime,
    end: datetime,
    out_path: Path,
    *,
    clock_offset_s: float = 0.0,
) -> CutResult:
    """Cut ``[start, end]`` (aware datetimes, server UTC) from the spool into ``out_path``.

    Each segment is placed by the offset stored with it; ``clock_offset_s`` (device minus
    server) places segments indexed without one (with 0, and a spool that stores no offsets,
    the window is simply in device time). The clip starts at the last keyframe at or before
    ``start`` (or where recording began, if later) and ends with the last frame starting
    before ``end``; ``CutResult`` reports the bounds actually covered, in device time, and the
    offset that maps them back to server time. Raises ``CutError`` if the window is empty or
    inverted, or if no recording covers any of it.
    """
    start, end = to_utc(start), to_utc(end)
    if end <= start:
        raise CutError(start, end, "the window is empty or inverted")
    segments = spool.segments_in_server_window(start, end, clock_offset_s)
    if not segments:
        raise CutError(start, end, "no recording in the spool covers any of the window")
    recordings = _choose_recordings(spool, segments, start, end, clock_offset_s)
    with contextlib.ExitStack() as stack:
        picked, template, extradata = _pick_packets(
            segments, recordings, start, end, clock_offset_s, stack
        )
        if not picked or template is None:
            raise CutError(start, end, "no frame of the recordings falls inside the window")
        # Device time of the first frame as the clock read when it was recorded.
        offset_used = picked[0].offset_s
        cut_start = picked[0].server + timedelta(seconds=offset_used)
        span = picked[-1].ticks + picked[-1].duration - picked[0].ticks
        cut_end = cut_start + timedelta(seconds=float(span * OUTPUT_TIME_BASE))
        rec_ids = tuple(sorted({r.recording_id for r in recordings}))
        _write_mp4(out_path, picked, template, extradata, cut_start, cut_end, rec_ids)
    first = min(recordings, key=lambda r: r.recording_id)
    return CutResult(
        path=out_path,
        cut_start=cut_start,
        cut_end=cut_end,
        duration_s=(cut_end - cut_start).total_seconds(),
        frames=len(picked),
        width=first.width,
        height=first.height,
        codec=first.codec,
        recording_ids=rec_ids,
        clock_offset_s=offset_used,
    )


def _write_mp4(
    out_path: Path,
    picked: list[_Picked],
    template: av.VideoStream,
    extradata: bytes,
    cut_start: datetime,
    cut_end: datetime,
    rec_ids: tuple[int, ...],
) -> None:
    temp = temp_path(out_path)
    zero = picked[0].ticks
    try:
        # faststart puts the index first, so a browser can play the clip as it downloads.
        with av.open(str(temp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            out.metadata["creation_time"] = _iso(cut_start)
            out.metadata["comment"] = (
                f"classcam cut_start={_iso(cut_start)} cut_end={_iso(cut_end)} "
                f"recordings={','.join(map(str, rec_ids))}"
            )
            stream = out.add_stream_from_template(template)
            # add_stream_from_template does not carry the SPS/PPS over (DESIGN.md §4).
            stream.codec_context.extradata = extradata
            stream.time_base = OUTPUT_TIME_BASE
            for item in picked:
                packet = item.packet
                packet.pts = packet.dts = item.ticks - zero
                packet.duration = item.duration
                packet.time_base = OUTPUT_TIME_BASE
                packet.stream = stream
                out.mux(packet)
        durable_replace(temp, out_path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
