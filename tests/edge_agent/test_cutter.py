"""Cutting windows out of a real spool by stream copy, checked by decoding with PyAV."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av
import pytest

from common.clock import VirtualClock
from edge_agent.camera import SyntheticCamera
from edge_agent.cutter import CutResult, cut_window, parse_cut_comment
from edge_agent.errors import CutError
from edge_agent.recorder import Recorder
from edge_agent.spool import Spool

T0 = datetime(2025, 3, 3, 1, 0, 0, tzinfo=UTC)
SEGMENT = timedelta(seconds=2)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def record(spool: Spool, clock: VirtualClock, seconds: float, **camera: object) -> int:
    cam = SyntheticCamera("dev-cut", clock=clock, **camera)  # type: ignore[arg-type]
    return Recorder(cam, spool, clock).record_for(seconds)


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spool]:
    """One 30 s recording at 640x360, 15 fps, starting at T0."""
    with Spool(tmp_path_factory.mktemp("spool")) as spool:
        record(spool, VirtualClock(T0), 30.0)
        yield spool


def seconds(pts: int | None, time_base: Fraction | None) -> timedelta:
    assert pts is not None and time_base is not None
    return timedelta(seconds=float(pts * time_base))


def packet_walls(result: CutResult) -> list[tuple[datetime, bytes, bool]]:
    """(wall time, bytes, keyframe) of every packet in a cut, from its pts and cut_start."""
    with av.open(str(result.path)) as container:
        stream = container.streams.video[0]
        return [
            (result.cut_start + seconds(p.pts, stream.time_base), bytes(p), p.is_keyframe)
            for p in container.demux(stream)
            if p.size
        ]


def test_cut_of_the_middle_decodes_and_reports_its_real_bounds(
    spool: Spool, tmp_path: Path
) -> None:
    result = cut_window(spool, at(10), at(20), tmp_path / "clip.mp4")
    assert result.path.exists() and not list(tmp_path.glob("*.part"))
    assert result.duration_s == pytest.approx(10, abs=SEGMENT.total_seconds())
    assert at(10) - SEGMENT <= result.cut_start <= at(10)
    assert at(20) <= result.cut_end <= at(20) + SEGMENT
    assert (result.width, result.height, result.codec) == (640, 360, "h264")
    assert 140 <= result.frames <= 180
    with av.open(str(result.path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        comment = container.metadata["comment"]
        created = container.metadata["creation_time"]
    assert len(frames) == result.frames
    assert frames[0].pts == 0 and frames[0].key_frame
    first_wall = result.cut_start + timedelta(seconds=float(frames[0].time or 0))
    last_wall = result.cut_start + timedelta(seconds=float(frames[-1].time or 0))
    assert at(10) - SEGMENT <= first_wall <= at(10)
    assert at(20) - SEGMENT <= last_wall < at(20)
    assert parse_cut_comment(comment) == (result.cut_start, result.cut_end)
    assert created.startswith(result.cut_start.strftime("%Y-%m-%dT%H:%M:%S"))


def test_cut_packets_are_the_source_packets_byte_for_byte(spool: Spool, tmp_path: Path) -> None:
    result = cut_window(spool, at(9.5), at(16.2), tmp_path / "clip.mp4")
    source: dict[datetime, bytes] = {}
    for seg in spool.segments_between(at(0), at(30)):
        with av.open(str(seg.path)) as container:
            stream = container.streams.video[0]
            for p in container.demux(stream):
                if p.size:
                    source[seg.start_wall + seconds(p.pts, stream.time_base)] = bytes(p)
    cut = packet_walls(result)
    assert len(cut) == result.frames
    for wall, data, _ in cut:
        assert source[wall] == data  # same time, same bytes: nothing was re-encoded


def test_the_clip_header_states_the_picture_size_without_decoding(
    spool: Spool, tmp_path: Path
) -> None:
    # The cutter opens all segments but the first without decoding; the clip's track must
    # still carry the picture size a player reads before it decodes anything.
    result = cut_window(spool, at(3), at(25), tmp_path / "clip.mp4")
    header_only = {"skip_frame": "all", "probesize": "32", "analyzeduration": "1"}
    with av.open(str(result.path), options=header_only) as container:
        context = container.streams.video[0].codec_context
        assert (context.width, context.height) == (640, 360)


def test_an_unaligned_window_starts_at_the_keyframe_before_it(spool: Spool, tmp_path: Path) -> None:
    result = cut_window(spool, at(10.5), at(13.3), tmp_path / "clip.mp4")
    cut = packet_walls(result)
    # Keyframes come every second, so the cut starts at 10 s and ends after the frame at 13.27 s.
    assert result.cut_start == at(10) == cut[0][0] and cut[0][2]
    assert result.cut_end == at(13 + 5 / 15)
    assert result.frames == len(cut) == 50
    assert [kf for _, _, kf in cut].count(True) == 4  # 10, 11, 12 and 13 s


def test_a_window_spanning_many_segments(spool: Spool, tmp_path: Path) -> None:
    result = cut_window(spool, at(3), at(27), tmp_path / "clip.mp4")
    assert (result.cut_start, result.cut_end, result.frames) == (at(3), at(27), 360)
    with av.open(str(result.path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 360
    pts = [f.pts or 0 for f in frames]
    assert {b - a for a, b in itertools.pairwise(pts)} == {6000}  # 1/15 s at 90 kHz


def test_a_window_overlapping_the_recording_start_is_cut_from_the_first_frame(
    spool: Spool, tmp_path: Path
) -> None:
    result = cut_window(spool, at(-5), at(3), tmp_path / "clip.mp4")
    assert (result.cut_start, result.cut_end, result.frames) == (T0, at(3), 45)


@pytest.mark.parametrize(
    ("start", "end", "why"),
    [
        (100, 110, "no recording"),
        (-60, -10, "no recording"),
        (30, 40, "no recording"),  # the recording ends at 30 s exactly
        (20, 10, "empty or inverted"),
        (10, 10, "empty or inverted"),
    ],
)
def test_windows_that_cannot_be_cut_raise_cut_error(
    spool: Spool, tmp_path: Path, start: float, end: float, why: str
) -> None:
    out = tmp_path / "clip.mp4"
    with pytest.raises(CutError, match=why) as info:
        cut_window(spool, at(start), at(end), out)
    assert (info.value.start, info.value.end) == (at(start), at(end))
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_a_cut_across_two_recordings_keeps_the_gap_between_them(tmp_path: Path) -> None:
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        first = record(spool, clock, 4.0)  # the clock ends on the frame after: 4 s
        clock.advance(3.0)  # camera restarted: nothing recorded from 4 s to 7 s
        second = record(spool, clock, 4.0)
        result = cut_window(spool, at(2), at(9), tmp_path / "clip.mp4")
    assert result.recording_ids == (first, second)
    assert (result.cut_start, result.cut_end, result.frames) == (at(2), at(9), 30 + 30)
    walls = [wall for wall, _, _ in packet_walls(result)]
    assert walls[29] == at(4 - 1 / 15) and walls[30] == at(7)


def test_a_recording_with_other_stream_parameters_is_left_out(tmp_path: Path) -> None:
    clock = VirtualClock(T0)
    with Spool(tmp_path / "spool") as spool:
        record(spool, clock, 2.0)
        other = record(spool, clock, 6.0, width=320, height=180)
        result = cut_window(spool, at(0), at(8), tmp_path / "clip.mp4")
    # One MP4 track cannot change size midway, so the recording covering more wins.
    assert result.recording_ids == (other,)
    assert (result.width, result.height, result.cut_start) == (320, 180, at(2))
