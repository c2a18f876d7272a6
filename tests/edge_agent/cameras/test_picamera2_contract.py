"""picamera2's Output contract, driven with real H.264 exactly as picamera2 drives an output.

picamera2 cannot run here (no libcamera), so these tests make the calls its encoders make:
``_add_stream(...)``, ``start()``, ``outputframe(frame, keyframe, timestamp, packet, audio)``
from the encoder's own thread with Annex B access units and µs timestamps, then ``stop()``.
The H.264 is real libx264 output shaped like the Pi's encoder's (SPS/PPS before each IDR).
What only a Pi can show is listed in docs/hardware-tests.md.
"""

from __future__ import annotations

import itertools
import sys
import threading
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av
import pytest
from camera_helpers import (
    MICROSECONDS,
    T0,
    EncodedUnit,
    annexb_slices,
    avcc_nal_units,
    decode_count,
    encode_h264,
    segment_packets,
    slices,
)

from common.clock import VirtualClock
from edge_agent.cameras import Backoff
from edge_agent.cameras.picamera2 import Picamera2Camera, SpoolOutput
from edge_agent.cutter import cut_window
from edge_agent.errors import CameraError
from edge_agent.spool import Spool

LATENCY_S = 0.04  # sensor to outputframe: the encoder's delay on a Pi


def drive(
    output: SpoolOutput,
    clock: VirtualClock,
    units: list[EncodedUnit],
    *,
    libav: bool = False,
    t0_mono: float | None = None,
) -> None:
    """Call ``outputframe`` as picamera2's encoder thread does, each frame arriving at its
    timestamp plus the encoder's latency (the clock stands still in between)."""
    start = clock.monotonic() if t0_mono is None else t0_mono

    def encoder_thread() -> None:
        for unit in units:
            due = start + float(unit.pts * MICROSECONDS) + LATENCY_S
            clock.advance(max(0.0, due - clock.monotonic()))
            if libav:  # LibavH264Encoder (Pi 5): the PyAV packet rides along
                packet = av.Packet(unit.data)
                packet.pts = packet.dts = unit.pts
                packet.time_base = MICROSECONDS
                output.outputframe(unit.data, unit.keyframe, unit.pts, packet, False)
            else:  # H264Encoder (V4L2 hardware encoder): bytes, keyframe flag, µs
                output.outputframe(unit.data, unit.keyframe, unit.pts)

    thread = threading.Thread(target=encoder_thread, name="picamera2-encoder")
    thread.start()
    thread.join()


@pytest.mark.parametrize("libav", [False, True], ids=["h264-v4l2-encoder", "libav-h264-encoder"])
def test_segments_switch_at_keyframes_without_dropping_a_frame(tmp_path: Path, libav: bool) -> None:
    units = encode_h264(150, fps=15, gop=15)  # 10 s, an IDR every second, like iperiod=15
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        output = SpoolOutput(spool, clock, fps=15, session_id="sess-pi")
        output._add_stream("video", "h264")
        output.start()
        drive(output, clock, units, libav=libav)
        output.stop()
        output.close()
        (rid,) = output.recording_ids
        rec = spool.recording(rid)
        segments = spool.segments(rid)
        written = [p for seg in segments for p in segment_packets(seg.path)]
    # Every frame the encoder gave is in the spool, in order, with the same coded pictures.
    assert output.frames_in == len(units) == sum(s.frames for s in segments) == 150
    assert [slices(avcc_nal_units(bytes(p))) for p in written] == [
        annexb_slices(u.data) for u in units
    ]
    # 2 s segments, each starting on an IDR; keyframes every 15 frames inside them.
    assert [s.frames for s in segments] == [30] * 5
    for seg in segments:
        pkts = segment_packets(seg.path)
        assert pkts[0].is_keyframe and pkts[0].pts == 0
        assert [p.pts for p in pkts if p.is_keyframe] == [0, 90_000]
        assert decode_count(seg.path) == seg.frames
    for before, after in itertools.pairwise(segments):
        assert before.end_pts == after.start_pts
    # µs timestamps became 90 kHz pts, anchored where the first frame reached us (the
    # encoder's latency included: the agent cannot know it).
    assert rec.time_base == Fraction(1, 90_000)
    assert rec.started_wall == T0 + timedelta(seconds=LATENCY_S)
    assert rec.ended_wall == rec.started_wall + timedelta(seconds=10)
    assert (rec.width, rec.height, rec.fps, rec.session_id) == (320, 240, 15.0, "sess-pi")
    # The SPS/PPS stored for the recording are the encoder's in-band ones.
    assert rec.extradata.startswith(b"\x00\x00\x00\x01\x67")


def test_a_cut_from_picamera2_segments_decodes(tmp_path: Path) -> None:
    units = encode_h264(150, fps=15, gop=15)
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        output = SpoolOutput(spool, clock, fps=15)
        output.start()
        drive(output, clock, units)
        output.stop()
        result = cut_window(
            spool, T0 + timedelta(seconds=3.5), T0 + timedelta(seconds=7.2), tmp_path / "cut.mp4"
        )
    # From the keyframe 3 s into the recording to the last frame starting before 7.2 s.
    assert result.cut_start == T0 + timedelta(seconds=3 + LATENCY_S)
    assert result.frames == 63
    assert decode_count(result.path) == 63


def test_a_camera_restart_is_a_reported_gap_and_a_new_recording(tmp_path: Path) -> None:
    before = encode_h264(60, fps=15, gop=15)  # 4 s
    after = encode_h264(45, fps=15, gop=15)  # the encoder restarts its timestamps at 0
    clock = VirtualClock(T0)
    gaps: list[tuple[datetime, datetime]] = []
    with Spool(tmp_path / "spool") as spool:
        output = SpoolOutput(spool, clock, fps=15, on_gap=lambda *g: gaps.append(g))
        output.start()
        drive(output, clock, before)
        output.interrupt()  # the stall watchdog fired: picamera2 is closed and reopened
        clock.advance(6.0)
        output.start()
        drive(output, clock, after)
        output.stop()
        output.close()
        ids = output.recording_ids
        recs = [spool.recording(r) for r in ids]
        frames = [sum(s.frames for s in spool.segments(r)) for r in ids]
        cut = cut_window(spool, T0, T0 + timedelta(seconds=30), tmp_path / "cut.mp4")
    assert len(ids) == 2 and frames == [60, 45]
    assert len(gaps) == 1
    start, end = gaps[0]
    assert start == recs[0].ended_wall == T0 + timedelta(seconds=4 + LATENCY_S)
    assert end == recs[1].started_wall
    assert end - start == pytest.approx(timedelta(seconds=6), abs=timedelta(seconds=0.1))
    # One clip spans both recordings; the outage shows as a jump in its pts.
    assert cut.recording_ids == tuple(ids) and cut.frames == 105
    assert decode_count(cut.path) == 105


def test_frames_outside_start_stop_and_audio_are_not_recorded(tmp_path: Path) -> None:
    units = encode_h264(30, fps=15, gop=15)
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        output = SpoolOutput(spool, clock, fps=15)
        output.outputframe(units[0].data, True, 0)  # before start(): picamera2 is not recording
        output.start()
        output.outputframe(None, True, 0, av.Packet(b"\xff\xf1audio"), True)  # an AAC packet
        drive(output, clock, units)
        output.stop()
        output.outputframe(units[0].data, True, 10**7)  # after stop()
        assert output.frames_in == 30
        assert sum(s.frames for s in spool.segments(output.recording_ids[0])) == 30


def test_an_encoder_that_is_not_h264_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:
        output = SpoolOutput(spool, VirtualClock(T0))
        with pytest.raises(CameraError, match="mjpeg"):
            output._add_stream("video", "mjpeg")


def test_off_a_pi_the_backend_says_what_to_install_and_reports_the_outage(tmp_path: Path) -> None:
    clock, stop = VirtualClock(T0), threading.Event()
    lost: list[str] = []
    gaps: list[tuple[datetime, datetime]] = []

    def on_lost(reason: str) -> None:
        lost.append(reason)
        clock.advance(5.0)
        stop.set()

    camera = Picamera2Camera(clock=clock, backoff=Backoff(initial_s=1.0, cap_s=2.0))
    with Spool(tmp_path / "spool") as spool:
        ids = camera.record(spool, stop, on_lost=on_lost, on_gap=lambda *g: gaps.append(g))
    assert ids == []
    assert len(lost) == 1 and "python3-picamera2" in lost[0]
    assert gaps == [(T0, T0 + timedelta(seconds=5))]  # the whole time without video
    assert "picamera2" not in sys.modules  # the failed import left nothing half-loaded
