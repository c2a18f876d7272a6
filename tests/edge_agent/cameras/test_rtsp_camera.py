"""The RTSP backend against a real RTSP server on loopback (GStreamer's, see the conftest).

The server's camera: 640x360 at 15 fps, x264 with an IDR every 22 frames (1.47 s, so segments
close on the camera's keyframes, not on a round number), multi-slice frames, SPS/PPS in the
SDP and before every IDR. These tests take ~25 s of real time: they record real streams.
"""

from __future__ import annotations

import itertools
import random
import resource
import signal
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import av
import pytest
from camera_helpers import annexb_slices, avcc_nal_units, decode_count, segment_packets, slices

from common.clock import SystemClock, utc_now
from edge_agent.cameras import Backoff
from edge_agent.cameras.h264 import parameter_sets
from edge_agent.cameras.rtsp import RtspCamera, redact, url_with_password
from edge_agent.cutter import cut_window
from edge_agent.spool import Spool
from simulators.rtsp_server import RtspCameraServer

GOP_TICKS = 22 * 6000  # the server's IDR period in 90 kHz ticks


class Tap:
    """A second, independent RTSP client on the same (shared) camera stream: what the camera
    really sent, to compare the spool with byte for byte."""

    def __init__(self, url: str) -> None:
        self.slices: set[bytes] = set()
        self.extradata = b""
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "the tap could not connect"

    def _run(self, url: str) -> None:
        options = {"rtsp_transport": "tcp", "analyzeduration": "0", "probesize": "32"}
        with av.open(url, options=options, timeout=(5.0, 5.0)) as container:
            stream = container.streams.video[0]
            self.extradata = bytes(stream.codec_context.extradata or b"")
            self.ready.set()
            for packet in container.demux(stream):
                self.slices.update(annexb_slices(bytes(packet)))
                if self.stop.is_set():
                    return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def record_in_thread(
    camera: RtspCamera, spool: Spool, stop: threading.Event, **kw: object
) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def run() -> None:
        start = resource.getrusage(resource.RUSAGE_THREAD)
        out["ids"] = camera.record(spool, stop, **kw)  # type: ignore[arg-type]
        end = resource.getrusage(resource.RUSAGE_THREAD)
        out["cpu_s"] = (end.ru_utime + end.ru_stime) - (start.ru_utime + start.ru_stime)

    thread = threading.Thread(target=run, name="rtsp-record")
    thread.start()
    return thread, out


def wait_until(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_records_the_camera_stream_by_copy_on_its_own_keyframes(
    tmp_path: Path, rtsp_camera: RtspCameraServer, record_property: object
) -> None:
    tap = Tap(rtsp_camera.url)
    camera = RtspCamera(rtsp_camera.url, clock=SystemClock())
    stop = threading.Event()
    with Spool(tmp_path / "spool") as spool:
        before = utc_now()
        thread, out = record_in_thread(camera, spool, stop, session_id="sess-ip")
        time.sleep(8.0)
        stop.set()
        thread.join(15)
        after = utc_now()
        tap.close()
        (rid,) = out["ids"]  # type: ignore[misc]
        rec = spool.recording(rid)
        segments = spool.segments(rid)
        written = [(s, p) for s in segments for p in segment_packets(s.path)]
        middle = rec.started_wall + timedelta(seconds=2.5)
        cut = cut_window(spool, middle, middle + timedelta(seconds=4), tmp_path / "cut.mp4")

    # Stream copy: every coded picture in the spool is byte for byte what the camera sent,
    # and the recording's SPS/PPS are the camera's (SDP and in-band alike).
    spool_slices = [s for _, p in written for s in slices(avcc_nal_units(bytes(p)))]
    assert len(spool_slices) >= 2 * len(written)  # multi-slice frames kept whole
    assert set(spool_slices) <= tap.slices
    assert rec.extradata == parameter_sets(tap.extradata)
    assert (rec.width, rec.height, rec.codec, rec.session_id) == (640, 360, "h264", "sess-ip")
    # About 8 s at 15 fps, with nothing lost; the recording's times are the real ones.
    frames = sum(s.frames for s in segments)
    assert 100 <= frames <= 125
    assert before <= rec.started_wall <= before + timedelta(seconds=1.5)
    assert rec.ended_wall is not None and rec.ended_wall <= after + timedelta(seconds=0.2)
    assert rec.fps == pytest.approx(15.0, abs=0.01)
    # Segments start on the camera's own IDR frames and close at the first one >= 2 s in:
    # two GOPs of 22 frames (2.93 s) each, the last one cut short by the stop.
    for seg in segments:
        pkts = segment_packets(seg.path)
        assert pkts[0].is_keyframe and pkts[0].pts == 0
        gops = -(-len(pkts) // 22)
        assert [p.pts for p in pkts if p.is_keyframe] == [k * GOP_TICKS for k in range(gops)]
        assert {b.pts - a.pts for a, b in itertools.pairwise(pkts)} <= {6000}
        assert decode_count(seg.path) == seg.frames
    assert [s.frames for s in segments[:-1]] == [44] * (len(segments) - 1)
    for a, b in itertools.pairwise(segments):
        assert a.end_pts == b.start_pts == a.start_pts + 2 * GOP_TICKS
    # The existing cutter copies a window across segments and it decodes.
    assert cut.frames >= 59 and decode_count(cut.path) == cut.frames
    assert cut.cut_start <= middle
    cpu_share = float(out["cpu_s"]) / 8.0  # type: ignore[arg-type]
    record_property("rtsp_record_cpu_share", round(cpu_share, 4))
    record_property("rtsp_bytes_per_s", round(camera.bytes_received / 8.0))
    assert cpu_share < 0.05  # demux + mux only; decoding and re-encoding would cost far more


def test_a_dead_camera_is_a_reported_gap_then_recording_resumes(
    tmp_path: Path, rtsp_camera: RtspCameraServer, record_property: object
) -> None:
    backoff = Backoff(initial_s=0.2, cap_s=1.0, jitter=0.5, rng=random.Random(7))
    camera = RtspCamera(
        rtsp_camera.url,
        clock=SystemClock(),
        open_timeout_s=2.0,
        read_timeout_s=1.0,
        backoff=backoff,
        healthy_after_s=1.0,
    )
    stop = threading.Event()
    gaps: list[tuple[datetime, datetime]] = []
    lost: list[str] = []
    with Spool(tmp_path / "spool") as spool:
        thread, out = record_in_thread(
            camera, spool, stop, on_gap=lambda *g: gaps.append(g), on_lost=lost.append
        )
        time.sleep(3.5)
        # The camera hangs (power cut, no FIN): only the read timeout can notice.
        assert rtsp_camera.process is not None
        rtsp_camera.process.send_signal(signal.SIGSTOP)
        frozen = utc_now()
        wait_until(lambda: camera.failures >= 1, timeout=6)
        noticed_s = (utc_now() - frozen).total_seconds()
        rtsp_camera.kill()  # ... and stays off: connections are refused for a while
        time.sleep(3.0)
        rtsp_camera.start()
        back = time.monotonic()
        wait_until(lambda: camera.connects >= 2, timeout=5)
        reconnect_s = time.monotonic() - back
        time.sleep(3.0)
        stop.set()
        thread.join(15)
        ids = out["ids"]
        recs = [spool.recording(r) for r in ids]  # type: ignore[attr-defined]
        window = (recs[0].started_wall + timedelta(seconds=1), recs[-1].ended_wall)
        cut = cut_window(spool, *window, tmp_path / "cut.mp4")  # type: ignore[arg-type]
        for rec in recs:
            for seg in spool.segments(rec.recording_id):
                assert segment_packets(seg.path)[0].is_keyframe

    record_property("rtsp_hang_noticed_s", round(noticed_s, 2))
    record_property("rtsp_reconnect_s", round(reconnect_s, 2))
    # One outage: reported once when it began, and as one gap when video was back.
    assert len(lost) == 1 and camera.outages == 1
    assert len(recs) == 2 and len(gaps) == 1
    start, end = gaps[0]
    assert start == recs[0].ended_wall and end == recs[1].started_wall
    assert abs(start - frozen) < timedelta(seconds=0.5)
    assert timedelta(seconds=5) < end - start < timedelta(seconds=12)
    # A silent camera is noticed within two read timeouts (FFmpeg hands one held packet over
    # after the first), and a camera that is back is found within the backoff cap.
    assert noticed_s < 2 * camera.read_timeout_s + 1.0
    assert reconnect_s < backoff.cap_s + 1.0
    # Backoff observed: waits double from 0.2 s up to the 1 s cap, jittered down by <= 50 %,
    # and the attempts really were that far apart.
    delays = camera.reconnect_delays
    assert len(delays) >= 4
    for i, delay in enumerate(delays):
        ceiling = min(1.0, 0.2 * 2**i)
        assert ceiling * 0.5 <= delay <= ceiling
    attempts = camera.attempt_times
    for i, (a, b) in enumerate(itertools.pairwise(attempts[1:])):
        assert b - a >= delays[i + 1] - 0.01
    # One clip spans the outage: both recordings, decodable, the gap visible in its length.
    assert cut.recording_ids == tuple(ids)  # type: ignore[arg-type]
    assert decode_count(cut.path) == cut.frames
    assert cut.duration_s > (window[1] - window[0]).total_seconds() - 3.0
    assert out["cpu_s"] is not None


def test_the_password_lives_outside_the_url_and_out_of_logs() -> None:
    url = url_with_password("rtsp://admin@192.168.1.64:554/Streaming/Channels/101", "p@ss:w/rd")
    assert url == "rtsp://admin:p%40ss%3Aw%2Frd@192.168.1.64:554/Streaming/Channels/101"
    camera = RtspCamera(url, clock=SystemClock())
    assert "p%40ss" not in camera.name and "admin:***@192.168.1.64:554" in camera.name
    assert redact("rtsp://[fe80::1]:8554/cam") == "rtsp://[fe80::1]:8554/cam"
