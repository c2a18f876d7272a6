"""PacketRecorder's time mapping and stream handling, on real H.264 and a real spool.

The arrival of each access unit is staged on a ``VirtualClock``: a burst of buffered packets,
a camera clock that runs fast, a stall in the camera, a frame split across packets.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from camera_helpers import (
    T0,
    EncodedUnit,
    annexb_slices,
    avcc_nal_units,
    decode_count,
    encode_h264,
    pairwise_steps,
    segment_packets,
    slices,
    synthetic_images,
)

from common.clock import VirtualClock
from edge_agent.cameras.h264 import is_idr, nal_units, parameter_sets
from edge_agent.cameras.packets import PacketRecorder
from edge_agent.cutter import cut_window
from edge_agent.spool import Spool

RTP = Fraction(1, 90_000)


def feed(
    recorder: PacketRecorder,
    clock: VirtualClock,
    units: list[EncodedUnit],
    arrival: list[float],
) -> None:
    """Hand ``units`` over at the given arrival offsets (seconds after the clock's start)."""
    start = 1000.0  # VirtualClock's monotonic start
    for unit, at in zip(units, arrival, strict=True):
        clock.advance(max(0.0, start + at - clock.monotonic()))
        recorder.write(unit.data, unit.pts, unit.keyframe)


def seconds(unit: EncodedUnit, time_base: Fraction = RTP) -> float:
    return float(unit.pts * time_base)


def test_annexb_helpers_find_parameter_sets_and_idr() -> None:
    units = encode_h264(16, gop=15, time_base=RTP)
    key, delta = units[0].data, units[1].data
    assert [u[0] & 0x1F for u in nal_units(key)][:2] == [7, 8]  # SPS, PPS before the IDR
    assert is_idr(key) and not is_idr(delta)
    assert parameter_sets(key).count(b"\x00\x00\x00\x01") == 2
    assert parameter_sets(delta) == b""
    assert parameter_sets(units[15].data) == parameter_sets(key)  # repeated at every IDR


def test_a_burst_of_buffered_packets_does_not_delay_the_anchor(tmp_path: Path) -> None:
    """RTSP probing or a 4G stall delivers the first second at once, 1.5 s late; the anchor
    follows the packets that arrived without delay."""
    units = encode_h264(90, gop=15, time_base=RTP)
    arrival = [max(1.5, seconds(u)) + 0.02 for u in units]
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        recorder = PacketRecorder(spool, clock, time_base=RTP)
        feed(recorder, clock, units, arrival)
        recorder.close()
        (rid,) = recorder.recording_ids
        rec = spool.recording(rid)
    assert rec.started_wall == T0 + timedelta(seconds=0.02)  # not T0 + 1.52 s
    assert rec.ended_wall == rec.started_wall + timedelta(seconds=6)


def test_a_drifting_camera_clock_is_slewed_within_one_recording(tmp_path: Path) -> None:
    """The camera's clock runs 1 % fast (a bad crystal, 100x the usual): its pts say 20 s
    where 19.8 s passed. The mapping follows our clock, half a frame per segment at most."""
    units = encode_h264(300, gop=15, time_base=RTP)
    arrival = [seconds(u) / 1.01 + 0.01 for u in units]
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        recorder = PacketRecorder(spool, clock, time_base=RTP)
        feed(recorder, clock, units, arrival)
        recorder.close()
        (rid,) = recorder.recording_ids
        rec = spool.recording(rid)
        segments = spool.segments(rid)
        pts = [s.start_pts + (p.pts or 0) for s in segments for p in segment_packets(s.path)]
    assert sum(s.frames for s in segments) == 300
    idr_arrivals = [at for u, at in zip(units, arrival, strict=True) if is_idr(u.data)]
    for seg in segments:  # each starts on an IDR, placed within 50 ms of when it arrived
        true = min(idr_arrivals, key=lambda at: abs(seg.start_wall - T0 - timedelta(seconds=at)))
        assert abs(seg.start_wall - T0 - timedelta(seconds=true)) < timedelta(seconds=0.05)
    for a, b in itertools.pairwise(segments):
        assert a.end_pts == b.start_pts
    # Uncorrected it would end at 20 s; it ends where the last frame arrived, give or take.
    assert rec.ended_wall - rec.started_wall == pytest.approx(
        timedelta(seconds=20 / 1.01), abs=timedelta(seconds=0.06)
    )
    # Frame steps stay 6000 ticks except at seams, where at most half a frame was taken out.
    steps = pairwise_steps(pts)
    assert 6000 in steps and len(steps) > 1 and min(steps) >= 3000 and max(steps) == 6000


def test_a_jump_in_camera_time_starts_a_new_recording_that_never_overlaps(
    tmp_path: Path,
) -> None:
    """The camera's pts leap 5 s ahead with no time passing (a firmware glitch): a new
    recording starts at that IDR on our clock, where the previous recording ended."""
    units = encode_h264(90, gop=15, time_base=RTP)
    leaped = [
        EncodedUnit(u.data, u.pts + (5 * 90_000 if i >= 45 else 0), u.keyframe)
        for i, u in enumerate(units)
    ]
    arrival = [seconds(u) + 0.01 for u in units]  # real time went on steadily
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        recorder = PacketRecorder(spool, clock, time_base=RTP, gap_threshold_s=10)
        feed(recorder, clock, leaped, arrival)
        recorder.close()
        recs = [spool.recording(r) for r in recorder.recording_ids]
        cut = cut_window(spool, T0, T0 + timedelta(seconds=30), tmp_path / "cut.mp4")
    assert len(recs) == 2
    assert recs[0].ended_wall is not None and recs[0].ended_wall <= recs[1].started_wall
    restart = recs[1].started_wall - T0
    assert restart == pytest.approx(timedelta(seconds=3.01), abs=timedelta(seconds=0.05))
    assert cut.frames == 90 and decode_count(cut.path) == 90


def test_a_cut_keeps_the_pixel_aspect_ratio_the_camera_signals(tmp_path: Path) -> None:
    """An IP camera's SPS may say its pixels are not square. The segment files carry no
    ``pasp`` box for it, so the clip's track has it only because the cutter probes its first
    segment in full (decoding) rather than header-only like the others."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 320, 240, "yuv420p"
    ctx.sample_aspect_ratio = Fraction(4, 3)
    ctx.time_base, ctx.framerate = RTP, Fraction(15)
    ctx.options = {"preset": "ultrafast", "x264-params": "keyint=15:scenecut=0:bframes=0"}
    units = []
    for i, image in enumerate(synthetic_images(60, 320, 240, 15.0)):
        yuv = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = i * 6000
        units += [EncodedUnit(bytes(p), int(p.pts or 0), p.is_keyframe) for p in ctx.encode(frame)]
    units += [EncodedUnit(bytes(p), int(p.pts or 0), p.is_keyframe) for p in ctx.encode(None)]
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        recorder = PacketRecorder(spool, clock, time_base=RTP)
        feed(recorder, clock, units, [seconds(u) for u in units])
        recorder.close()
        cut = cut_window(
            spool, T0 + timedelta(seconds=1), T0 + timedelta(seconds=3.5), tmp_path / "cut.mp4"
        )
    header_only = {"codec_whitelist": "none", "probesize": "32", "analyzeduration": "1"}
    with av.open(str(cut.path), options=header_only) as container:
        assert container.streams.video[0].sample_aspect_ratio == Fraction(4, 3)


def test_a_stall_in_the_camera_pts_is_a_reported_gap(tmp_path: Path) -> None:
    units = encode_h264(60, gop=15, time_base=RTP)
    # The camera lost 3 s between frame 29 and 30 (e.g. its sensor restarted).
    shifted = [
        EncodedUnit(u.data, u.pts + (3 * 90_000 if i >= 30 else 0), u.keyframe)
        for i, u in enumerate(units)
    ]
    arrival = [seconds(u) for u in shifted]
    clock = VirtualClock(T0)
    gaps: list[tuple[datetime, datetime]] = []
    with Spool(tmp_path / "spool") as spool:
        recorder = PacketRecorder(spool, clock, time_base=RTP, on_gap=lambda *g: gaps.append(g))
        feed(recorder, clock, shifted, arrival)
        recorder.close()
        (rid,) = recorder.recording_ids
        frames = sum(s.frames for s in spool.segments(rid))
    assert frames == 60
    assert gaps == [(T0 + timedelta(seconds=2), T0 + timedelta(seconds=5))]


def test_frames_split_across_packets_are_joined(tmp_path: Path) -> None:
    """FFmpeg's RTSP depacketizer may hand one multi-slice frame over as several packets
    (same pts, or the first with none); the spool must hold one sample per frame."""
    units = encode_h264(45, gop=15, time_base=RTP)
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        recorder = PacketRecorder(spool, clock, time_base=RTP)
        for i, unit in enumerate(units):
            clock.advance(max(0.0, 1000.0 + seconds(unit) - clock.monotonic()))
            half = len(unit.data) // 2
            cut_at = unit.data.rfind(b"\x00\x00\x01", 0, half) if i % 2 else -1
            if cut_at > 0:  # split at a start code, as a depacketizer would
                recorder.write(unit.data[: cut_at - 1], None if i == 1 else unit.pts, unit.keyframe)
                recorder.write(unit.data[cut_at - 1 :], unit.pts, unit.keyframe)
            else:
                recorder.write(unit.data, unit.pts, unit.keyframe)
        recorder.close()
        (rid,) = recorder.recording_ids
        written = [p for s in spool.segments(rid) for p in segment_packets(s.path)]
    assert len(written) == 45
    assert [slices(avcc_nal_units(bytes(p))) for p in written] == [
        annexb_slices(u.data) for u in units
    ]


def test_it_starts_at_the_first_idr_and_splits_when_the_stream_changes(tmp_path: Path) -> None:
    small = encode_h264(40, gop=15, width=320, height=240, time_base=RTP)
    large = encode_h264(30, gop=15, width=480, height=272, time_base=RTP, first_pts=40 * 6000)
    units = small[5:] + large  # joined mid-GOP, then the camera's resolution was changed
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        recorder = PacketRecorder(spool, clock, time_base=RTP)
        feed(recorder, clock, units, [seconds(u) for u in units])
        recorder.close()
        recs = [spool.recording(r) for r in recorder.recording_ids]
        segments = [spool.segments(r.recording_id) for r in recs]
    frames = [sum(s.frames for s in segs) for segs in segments]
    assert recorder.units_dropped == 10  # frames 5..14: nothing to decode them from
    assert [(r.width, r.height) for r in recs] == [(320, 240), (480, 272)]
    assert frames == [25, 30]
    assert segments[0][0].start_wall == T0 + timedelta(seconds=1)  # the IDR at frame 15
    assert recs[1].extradata != recs[0].extradata
    assert recs[0].ended_wall == recs[1].started_wall  # a clean change, not an outage
    for a, b in itertools.pairwise(segments[0]):
        assert a.end_pts == b.start_pts


@pytest.mark.parametrize("tb", [Fraction(1, 90_000), Fraction(1, 1_000_000)])
def test_source_time_bases_map_exactly_onto_90_khz(tmp_path: Path, tb: Fraction) -> None:
    units = encode_h264(31, gop=15, time_base=tb)
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        recorder = PacketRecorder(spool, clock, time_base=tb)
        feed(recorder, clock, units, [seconds(u, tb) for u in units])
        recorder.close()
        segs = spool.segments(recorder.recording_ids[0])
        pts = [s.start_pts + (p.pts or 0) for s in segs for p in segment_packets(s.path)]
    assert pts == [i * 6000 for i in range(31)]
