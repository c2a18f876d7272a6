"""Recorder and spool against real PyAV files and SQLite: segments, keyframes, crashes."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av
import pytest

from common.clock import VirtualClock
from edge_agent.camera import Frame, SyntheticCamera
from edge_agent.errors import CameraError, SpoolError
from edge_agent.recorder import TIME_BASE, Recorder
from edge_agent.spool import SegmentInfo, Spool, temp_path

T0 = datetime(2025, 3, 3, 1, 0, 0, tzinfo=UTC)


def record(root: Path, seconds: float, clock: VirtualClock | None = None, **kw: object) -> int:
    clock = clock or VirtualClock(T0)
    camera = SyntheticCamera("dev-rec", clock=clock)
    with Spool(root) as spool:
        return Recorder(camera, spool, clock, **kw).record_for(seconds)  # type: ignore[arg-type]


def packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        return [p for p in container.demux(video=0) if p.size]


@pytest.fixture(scope="module")
def thirty_seconds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    root = tmp_path_factory.mktemp("spool")
    return root, record(root, 30.0, session_id="sess-1")


def test_index_lists_contiguous_two_second_segments(thirty_seconds: tuple[Path, int]) -> None:
    root, rid = thirty_seconds
    with Spool(root) as spool:
        segments = spool.segments(rid)
        rec = spool.recording(rid)
    assert len(segments) == 15
    assert [s.seq for s in segments] == list(range(15))
    assert sum(s.frames for s in segments) == 450
    for seg in segments:
        assert seg.end_wall - seg.start_wall == timedelta(seconds=2)
        assert seg.end_mono - seg.start_mono == pytest.approx(2.0)
        assert seg.frames == 30
        assert seg.size == seg.path.stat().st_size > 10_000
    for before, after in itertools.pairwise(segments):
        assert before.end_wall == after.start_wall
        assert before.end_pts == after.start_pts
    assert segments[0].start_wall == T0 == rec.started_wall
    assert rec.ended_wall == T0 + timedelta(seconds=30)
    assert (rec.session_id, rec.width, rec.height, rec.fps) == ("sess-1", 640, 360, 15.0)
    assert rec.codec == "h264" and rec.time_base == Fraction(1, 90_000)
    assert rec.extradata.startswith(b"\x00\x00\x00\x01")  # SPS/PPS kept for the cutter


def test_segments_start_on_a_keyframe_and_decode(thirty_seconds: tuple[Path, int]) -> None:
    root, rid = thirty_seconds
    with Spool(root) as spool:
        segments = spool.segments(rid)
    for seg in segments:
        pkts = packets(seg.path)
        assert pkts[0].is_keyframe and pkts[0].pts == 0
        # One keyframe a second, fixed: exactly at 0 s and 1 s of each 2 s segment.
        assert [p.pts for p in pkts if p.is_keyframe] == [0, 90_000]
        assert [p.pts for p in pkts] == [i * 6000 for i in range(30)]
        with av.open(str(seg.path)) as container:
            frames = list(container.decode(video=0))
        assert len(frames) == seg.frames
        assert (frames[0].width, frames[0].height) == (640, 360)


def test_segments_between_returns_overlapping_segments_in_order(
    thirty_seconds: tuple[Path, int],
) -> None:
    root, _ = thirty_seconds
    with Spool(root) as spool:
        hits = spool.segments_between(T0 + timedelta(seconds=3), T0 + timedelta(seconds=8))
        edge = spool.segments_between(T0 + timedelta(seconds=4), T0 + timedelta(seconds=6))
        assert spool.segments_between(T0 - timedelta(hours=1), T0) == []
    assert [s.seq for s in hits] == [1, 2, 3]
    assert [s.seq for s in edge] == [2]  # a segment ending exactly at the start is not needed


class GappyCamera(SyntheticCamera):
    """Stalls for 3 s after frame 40, then stops the recorder after frame 90."""

    def __init__(self, clock: VirtualClock, stop: threading.Event) -> None:
        super().__init__("dev-gap", clock=clock)
        self._vclock, self._stop = clock, stop

    def read(self) -> Frame:
        if self.frames_delivered == 40:
            self._vclock.advance(3.0)
        if self.frames_delivered == 89:
            self._stop.set()
        return super().read()


def test_a_camera_stall_is_a_real_gap_in_pts_and_is_reported(tmp_path: Path) -> None:
    clock, stop = VirtualClock(T0), threading.Event()
    gaps: list[tuple[datetime, datetime]] = []
    with Spool(tmp_path) as spool:
        recorder = Recorder(
            GappyCamera(clock, stop), spool, clock, on_gap=lambda *g: gaps.append(g)
        )
        rid = recorder.run(stop)
        segments = spool.segments(rid)
    assert sum(s.frames for s in segments) == 90
    pts = [s.start_pts + (p.pts or 0) for s in segments for p in packets(s.path)]
    steps = sorted({b - a for a, b in itertools.pairwise(pts)})
    assert steps == [6000, 3 * 90_000]  # steady frames, and one long step where it stalled
    assert len(gaps) == 1
    gap_start, gap_end = gaps[0]
    assert gap_end - gap_start == pytest.approx(timedelta(seconds=3), abs=timedelta(seconds=0.1))
    assert all(packets(s.path)[0].is_keyframe for s in segments)


def test_a_vanishing_camera_keeps_what_was_recorded(tmp_path: Path) -> None:
    clock = VirtualClock(T0)
    camera = SyntheticCamera("dev-gone", clock=clock, fail_after_frames=100)
    with Spool(tmp_path) as spool:
        recorder = Recorder(camera, spool, clock)
        with pytest.raises(CameraError):
            recorder.record_for(30)
        assert recorder.recording_id is not None
        segments = spool.segments(recorder.recording_id)
        rec = spool.recording(recorder.recording_id)
    assert sum(s.frames for s in segments) == 100
    assert rec.ended_wall == segments[-1].end_wall == T0 + timedelta(seconds=100 / 15)
    assert not list(tmp_path.rglob("*.part"))


def test_run_until_stop(tmp_path: Path) -> None:
    clock, stop = VirtualClock(T0), threading.Event()

    class StoppingCamera(SyntheticCamera):
        def read(self) -> Frame:
            if self.frames_delivered == 59:
                stop.set()
            return super().read()

    with Spool(tmp_path) as spool:
        rid = Recorder(StoppingCamera("dev-stop", clock=clock), spool, clock).run(stop)
        assert sum(s.frames for s in spool.segments(rid)) == 60
        assert spool.recording(rid).ended_wall == T0 + timedelta(seconds=4)


def test_only_one_spool_per_root(tmp_path: Path) -> None:
    with Spool(tmp_path), pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path)
    Spool(tmp_path).close()  # free again once closed


_CHILD = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from common.clock import VirtualClock
    from edge_agent.camera import SyntheticCamera
    from edge_agent.recorder import Recorder
    from edge_agent.spool import Spool
    clock = VirtualClock()
    spool = Spool(Path(sys.argv[1]))
    Recorder(SyntheticCamera("dev-kill", clock=clock), spool, clock).run(threading.Event())
    """
)


def test_power_cut_mid_write_loses_at_most_the_segment_in_flight(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)])
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("rec/*/*.mp4"))) < 4:
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)  # like pulling the plug: no cleanup runs
    finally:
        child.kill()
        child.wait()
    rec_dir = next((tmp_path / "rec").iterdir())
    # Whatever the kill interrupted, add the two kinds of leftovers a power cut can leave.
    (rec_dir / "999998.mp4.part").write_bytes(b"\x00\x00\x00\x18ftypisom")
    (rec_dir / "999999.mp4").write_bytes(b"renamed but never indexed")

    with Spool(tmp_path) as spool:
        assert rec_dir / "999998.mp4.part" in spool.dropped_files
        assert rec_dir / "999999.mp4" in spool.dropped_files
        assert not list(tmp_path.rglob("*.part"))
        (rec,) = spool.recordings()
        segments = spool.segments(rec.recording_id)
    assert len(segments) >= 3
    assert {p for p in rec_dir.iterdir()} == {s.path for s in segments}
    for seg in segments:
        pkts = packets(seg.path)
        assert len(pkts) == seg.frames and pkts[0].is_keyframe
    # The recording cut short ends where its last complete segment ends.
    assert rec.ended_wall == segments[-1].end_wall


def test_add_segment_checks_and_computes_times(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        rid = spool.begin_recording(
            session_id=None,
            width=2,
            height=2,
            fps=10.0,
            codec="h264",
            time_base=TIME_BASE,
            extradata=b"x",
            started_wall=T0,
            started_mono=50.0,
        )
        path = spool.segment_path(rid, 0)
        path.write_bytes(b"12345")
        seg = spool.add_segment(rid, seq=0, path=path, start_pts=9000, end_pts=99_000, frames=9)
        assert isinstance(seg, SegmentInfo)
        assert seg.start_wall == T0 + timedelta(seconds=0.1)
        assert seg.end_wall == T0 + timedelta(seconds=1.1)
        assert (seg.start_mono, seg.end_mono) == pytest.approx((50.1, 51.1))
        assert seg.size == 5
        assert spool.segments(rid) == [seg]
        with pytest.raises(SpoolError):
            spool.add_segment(rid, seq=1, path=path, start_pts=5, end_pts=5, frames=1)
        with pytest.raises(SpoolError):
            spool.recording(rid + 1)
        spool.delete_recording(rid)
        assert spool.recordings() == [] and not path.exists()


def test_even_the_shortest_recording_keeps_its_first_frame(tmp_path: Path) -> None:
    rid = record(tmp_path, 0.01)
    with Spool(tmp_path) as spool:
        (segment,) = spool.segments(rid)
        assert segment.frames == 1
        assert spool.recording(rid).ended_wall == T0 + timedelta(seconds=1 / 15)


def test_a_read_only_spool_reads_beside_the_writer_without_touching_its_files(
    tmp_path: Path,
) -> None:
    clock = VirtualClock(T0)
    with Spool(tmp_path) as writer:
        rid = Recorder(SyntheticCamera("dev-ro", clock=clock), writer, clock).record_for(4)
        in_flight = temp_path(writer.segment_path(rid, 99))
        in_flight.write_bytes(b"being written")
        with Spool(tmp_path, read_only=True) as reader:
            assert [s.seq for s in reader.segments(rid)] == [0, 1]
            assert reader.recording(rid).ended_wall == T0 + timedelta(seconds=4)
            with pytest.raises(SpoolError, match="read-only"):
                reader.end_recording(rid, ended_wall=T0)
        assert in_flight.exists()  # only the writer cleans up, and only at its own start
    with pytest.raises(SpoolError, match="no spool index"):
        Spool(tmp_path / "nowhere", read_only=True)
