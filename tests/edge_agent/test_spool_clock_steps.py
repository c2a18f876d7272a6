"""The spool's index across wall-clock steps: each segment carries its device time and the
clock offset of when it was recorded, so a server-time window finds its footage whatever the
wall clock did; an index written by an older agent is upgraded in place."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
import pytest
from clock_helpers import SteppingClock, server_answer

from edge_agent.camera import Frame, SyntheticCamera
from edge_agent.cutter import cut_window
from edge_agent.errors import SpoolError
from edge_agent.recorder import Recorder
from edge_agent.spool import Spool
from edge_agent.timesync import ClockOffset

T0 = datetime(2025, 3, 3, 0, 0, tzinfo=UTC)
FPS = 10.0
DEVICE_AHEAD_S = 90.0  # the device clock runs 90 s fast before the step


class SteppedCamera(SyntheticCamera):
    """A camera whose clock's wall time is stepped after ``step_after`` frames."""

    def __init__(self, clock: SteppingClock, step_after: int, step_s: float) -> None:
        super().__init__("dev-step", width=160, height=120, fps=FPS, clock=clock)
        self.stepping = clock
        self.step_after, self.step_s, self.reads = step_after, step_s, 0

    def read(self) -> Frame:
        self.reads += 1
        if self.reads == self.step_after:
            self.stepping.step(self.step_s)
        return super().read()


def frames_in(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("step_s", [600.0, -600.0])
def test_a_wall_clock_step_during_a_recording_still_lets_a_window_over_it_be_cut(
    tmp_path: Path, step_s: float
):
    clock = SteppingClock(T0)
    offset = ClockOffset(clock)
    server_answer(offset, clock, DEVICE_AHEAD_S, rtt=0.02)
    server_start = clock.now() - timedelta(seconds=DEVICE_AHEAD_S)
    with Spool(tmp_path / "spool", timeline=offset) as spool:
        camera = SteppedCamera(clock, step_after=int(10 * FPS), step_s=step_s)
        Recorder(camera, spool, clock, segment_seconds=1.0).record_for(20.0)
        assert offset.seconds == pytest.approx(DEVICE_AHEAD_S + step_s, abs=0.05)
        for first, last in [(7.0, 13.0), (14.0, 18.0), (2.0, 6.0)]:  # across, after, before
            start = server_start + timedelta(seconds=first)
            end = server_start + timedelta(seconds=last)
            out = tmp_path / f"cut-{first}.mp4"
            cut = cut_window(spool, start, end, out, clock_offset_s=offset.or_zero())
            mapped = timedelta(seconds=cut.clock_offset_s)
            # Mapped back to server time the clip covers the window (keyframe each second).
            assert start - timedelta(seconds=1) <= cut.cut_start - mapped <= start
            assert abs((cut.cut_end - mapped - end).total_seconds()) <= 1 / FPS + 1e-3
            # Its device time is what the clock read when that footage was recorded.
            stepped = step_s if first >= 10 else 0.0
            assert cut.clock_offset_s == pytest.approx(DEVICE_AHEAD_S + stepped, abs=0.05)
            assert cut.duration_s == pytest.approx((cut.cut_end - cut.cut_start).total_seconds())
            assert frames_in(out) == pytest.approx(cut.duration_s * FPS, abs=1)


def test_a_segment_recorded_without_an_estimate_is_placed_with_the_cut_offset(tmp_path: Path):
    clock = SteppingClock(T0)
    with Spool(tmp_path / "spool", timeline=ClockOffset(clock)) as spool:
        camera = SyntheticCamera("dev-none", width=160, height=120, fps=FPS, clock=clock)
        Recorder(camera, spool, clock, segment_seconds=1.0).record_for(6.0)
        assert all(seg.offset_s is None for seg in spool.segments_between(T0, T0 + timedelta(1)))
        window = (T0 + timedelta(seconds=2) - timedelta(seconds=30), T0 - timedelta(seconds=26))
        cut = cut_window(spool, *window, tmp_path / "cut.mp4", clock_offset_s=30.0)
        assert cut.clock_offset_s == 30.0
        assert cut.cut_start == T0 + timedelta(seconds=2)


OLD_SCHEMA = """
CREATE TABLE recordings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, width INTEGER NOT NULL,
    height INTEGER NOT NULL, fps REAL NOT NULL, codec TEXT NOT NULL, tb_num INTEGER NOT NULL,
    tb_den INTEGER NOT NULL, extradata BLOB NOT NULL, started_wall_us INTEGER NOT NULL,
    started_mono REAL NOT NULL, ended_wall_us INTEGER
);
CREATE TABLE segments (
    recording_id INTEGER NOT NULL REFERENCES recordings(id), seq INTEGER NOT NULL,
    path TEXT NOT NULL, start_pts INTEGER NOT NULL, end_pts INTEGER NOT NULL,
    start_wall_us INTEGER NOT NULL, end_wall_us INTEGER NOT NULL, frames INTEGER NOT NULL,
    size INTEGER NOT NULL, PRIMARY KEY (recording_id, seq)
);
CREATE INDEX segments_by_wall ON segments (start_wall_us, end_wall_us);
"""


def test_an_index_written_by_an_older_agent_is_upgraded_in_place(tmp_path: Path):
    root = tmp_path / "spool"
    (root / "rec" / "1").mkdir(parents=True)
    (root / "rec" / "1" / "000000.mp4").write_bytes(b"segment")
    t0_us = int(T0.timestamp() * 1_000_000)
    with sqlite3.connect(root / "index.sqlite3") as db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO recordings VALUES (1, 's-1', 160, 120, 10.0, 'h264', 1, 90000, x'00',"
            " ?, 100.0, ?)",
            (t0_us, t0_us + 2_000_000),
        )
        db.execute(
            "INSERT INTO segments VALUES (1, 0, 'rec/1/000000.mp4', 0, 180000, ?, ?, 20, 7)",
            (t0_us, t0_us + 2_000_000),
        )
    with pytest.raises(SpoolError, match="older"):
        Spool(root, read_only=True)
    with Spool(root) as spool:
        [seg] = spool.segments_in_server_window(T0, T0 + timedelta(seconds=1))
        assert seg.offset_s is None and seg.start_wall == T0
        # Old footage is placed with the offset of the cut that asks for it.
        assert spool.segments_in_server_window(T0, T0 + timedelta(seconds=1), 60.0) == []
        assert spool.segments_in_server_window(
            T0 - timedelta(seconds=60), T0 - timedelta(seconds=59), 60.0
        )
    with sqlite3.connect(root / "index.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        row = db.execute("SELECT start_server_us, offset_us FROM segments").fetchone()
        assert row == (t0_us, None)
    with Spool(root, read_only=True) as reader:  # upgraded: a reader may open it now
        assert len(reader.segments(1)) == 1
