"""The local spool: keyframe-aligned segment files and a SQLite index of their times.

Layout under ``root``::

    index.sqlite3            recordings and segments (WAL, synchronous=FULL)
    rec/<recording_id>/      000000.mp4, 000001.mp4, ... (complete segments only)
    lock                     held (flock) by the one process that owns the spool

A segment reaches the index only after its file is complete, fsynced and renamed from its
temporary ``.part`` name, and its directory fsynced. So after a power cut the index never
names a missing or half-written file, and opening the spool drops whatever was in flight.

Times: each recording has a time base (90 kHz by default) and is anchored by the wall and
monotonic time of its first frame (pts 0): the monotonic clock, not the wall clock, orders
frames, so an NTP step mid-class cannot reorder or stretch a recording. Each segment carries
the device wall time read when it was indexed (its monotonic time mapped through the wall
clock as set then) and the clock offset estimated then, so its *server* time is
``wall - offset`` whatever the wall clock did before or after: a window in server UTC finds
the footage that was recorded in it even across a wall-clock step. Without a ``timeline``
(tests, tools) a segment's wall time is ``started_wall + pts * tb`` and its offset unknown.
Times are stored as integer microseconds since the epoch.

The index upgrades itself in place (``PRAGMA user_version``): agents in the field have one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from common.clock import to_utc
from edge_agent.errors import SpoolError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".part"
SEGMENT_SUFFIX = ".mp4"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SEGMENT_US = 3600 * 1_000_000  # no segment is longer (they are 1-60 s)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    fps REAL NOT NULL,
    codec TEXT NOT NULL,
    tb_num INTEGER NOT NULL,
    tb_den INTEGER NOT NULL,
    extradata BLOB NOT NULL,
    started_wall_us INTEGER NOT NULL,
    started_mono REAL NOT NULL,
    ended_wall_us INTEGER
);
CREATE TABLE IF NOT EXISTS segments (
    recording_id INTEGER NOT NULL REFERENCES recordings(id),
    seq INTEGER NOT NULL,
    path TEXT NOT NULL,
    start_pts INTEGER NOT NULL,
    end_pts INTEGER NOT NULL,
    start_wall_us INTEGER NOT NULL,
    end_wall_us INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (recording_id, seq)
);
CREATE INDEX IF NOT EXISTS segments_by_wall ON segments (start_wall_us, end_wall_us);
"""

# Each step upgrades an index of the previous version; user_version counts the steps done.
_MIGRATIONS = (
    # 1: server time beside each segment's device time (wall - offset; the offset may be
    # unknown, then the server columns hold the wall time and a cut maps them itself).
    """ALTER TABLE segments ADD COLUMN offset_us INTEGER;
    ALTER TABLE segments ADD COLUMN start_server_us INTEGER;
    ALTER TABLE segments ADD COLUMN end_server_us INTEGER;
    UPDATE segments SET start_server_us = start_wall_us, end_server_us = end_wall_us;
    CREATE INDEX IF NOT EXISTS segments_by_server ON segments (start_server_us, end_server_us);
    ALTER TABLE recordings ADD COLUMN boot_id TEXT;""",
)


class Timeline(Protocol):
    """Maps the monotonic clock onto the device's wall clock and the server's (the agent's
    ``ClockOffset``)."""

    def stamp(self, mono: float) -> tuple[datetime, float | None]:
        """(device wall time of ``mono`` as the wall clock is set now, device minus server
        offset estimated now, or None)."""


def _to_us(value: datetime) -> int:
    delta = to_utc(value) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(final: Path) -> Path:
    """Where a file is written before it is complete and renamed to ``final``."""
    return final.with_name(final.name + TEMP_SUFFIX)


def durable_replace(temp: Path, final: Path) -> None:
    """fsync ``temp``, rename it to ``final`` and fsync the directory: all or nothing."""
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, final)
    fsync_dir(final.parent)


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """One continuous encoder run: its stream parameters and its time anchor."""

    recording_id: int
    session_id: str | None
    width: int
    height: int
    fps: float
    codec: str
    time_base: Fraction
    extradata: bytes  # the encoder's SPS/PPS (Annex B for libx264)
    started_wall: datetime
    started_mono: float
    ended_wall: datetime | None

    def wall_at(self, pts: int) -> datetime:
        """Wall-clock time of a packet with this recording-relative ``pts``."""
        # Integer arithmetic: Fractions cost ~20 ms over the packets of a 60 s cut.
        num, den = self.time_base.numerator * 1_000_000, self.time_base.denominator
        return self.started_wall + timedelta(microseconds=(2 * pts * num + den) // (2 * den))

    def mono_at(self, pts: int) -> float:
        """Monotonic time of a packet with this recording-relative ``pts``."""
        return self.started_mono + float(pts * self.time_base)


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One complete segment file; it starts on a keyframe and covers [start, end)."""

    recording_id: int
    seq: int
    path: Path
    start_wall: datetime
    end_wall: datetime
    start_mono: float
    end_mono: float
    frames: int
    size: int
    start_pts: int  # recording-relative; the file's own pts start at 0
    end_pts: int
    offset_s: float | None = None  # device minus server clock when indexed; None: unknown

    def server_span(self, fallback_offset_s: float = 0.0) -> tuple[datetime, datetime]:
        """Server-time bounds: ``wall - offset``, with ``fallback_offset_s`` where the
        offset was unknown when the segment was indexed."""
        offset = timedelta(
            seconds=self.offset_s if self.offset_s is not None else fallback_offset_s
        )
        return self.start_wall - offset, self.end_wall - offset


class Spool:
    """Segment files plus their index. One writer per root, holding an exclusive lock.

    Thread-safe: the recorder adds segments from its thread while the cutter reads.
    ``read_only=True`` opens a running agent's spool from another process (e.g. a CLI cut):
    no lock, no start-up clean-up (which would delete the writer's in-flight file), no writes.
    """

    def __init__(
        self, root: Path, *, read_only: bool = False, timeline: Timeline | None = None
    ) -> None:
        self.root = Path(root).resolve()
        self.timeline = timeline
        self.boot_id: str | None = None  # written beside each new recording
        self.rec_dir = self.root / "rec"
        self.read_only = read_only
        self._lock = threading.Lock()
        self._lock_file = None
        self.dropped_files: list[Path] = []
        if read_only:
            if not (self.root / "index.sqlite3").exists():
                raise SpoolError(f"no spool index in {self.root}")
        else:
            self.rec_dir.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.root / "lock", "a+b")  # noqa: SIM115 - held while open
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                self._lock_file.close()
                raise SpoolError(f"spool {self.root} is in use by another Spool") from exc
        self._db = sqlite3.connect(
            self.root / "index.sqlite3", check_same_thread=False, isolation_level=None
        )
        if read_only:
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version < len(_MIGRATIONS):
                self._db.close()
                raise SpoolError(f"spool index {self.root} is older than this agent")
        else:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._migrate()
            self.dropped_files = self._recover()

    def _check_writable(self) -> None:
        if self.read_only:
            raise SpoolError(f"spool {self.root} was opened read-only")

    # -- start-up -------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Bring an index written by an older agent up to date, one step per version."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            statements = [part.strip() for part in script.split(";") if part.strip()]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            log.info("spool index %s upgraded to version %d", self.root, number)

    def _recover(self) -> list[Path]:
        """Drop what a power cut left half-done; return the files removed."""
        indexed = {self.root / path for (path,) in self._db.execute("SELECT path FROM segments")}
        dropped: list[Path] = []
        for path in sorted(self.rec_dir.glob("*/*")):
            if path.is_file() and path not in indexed:
                # A .part file, or one renamed but not yet indexed: either way, in flight.
                path.unlink()
                dropped.append(path)
        for path in indexed:
            if not path.exists():
                log.warning("index names missing segment %s; forgetting it", path)
                self._db.execute("DELETE FROM segments WHERE path = ?", (self._rel(path),))
        if dropped:
            for folder in {p.parent for p in dropped}:
                fsync_dir(folder)
            log.warning("dropped %d unfinished segment file(s) from %s", len(dropped), self.root)
        # Recordings cut short by a crash end where their last complete segment ends.
        self._db.execute(
            """UPDATE recordings SET ended_wall_us = COALESCE(
                   (SELECT MAX(end_wall_us) FROM segments WHERE recording_id = recordings.id),
                   started_wall_us)
               WHERE ended_wall_us IS NULL"""
        )
        return dropped

    def _rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.root))

    # -- writing --------------------------------------------------------------------------

    def begin_recording(
        self,
        *,
        session_id: str | None,
        width: int,
        height: int,
        fps: float,
        codec: str,
        time_base: Fraction,
        extradata: bytes,
        started_wall: datetime,
        started_mono: float,
    ) -> int:
        """Register a new recording (anchored at its first frame) and return its id."""
        self._check_writable()
        with self._lock:
            cur = self._db.execute(
                """INSERT INTO recordings (session_id, width, height, fps, codec, tb_num, tb_den,
                       extradata, started_wall_us, started_mono, boot_id)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    session_id,
                    width,
                    height,
                    fps,
                    codec,
                    time_base.numerator,
                    time_base.denominator,
                    extradata,
                    _to_us(started_wall),
                    started_mono,
                    self.boot_id,
                ),
            )
            recording_id = cur.lastrowid
        assert recording_id is not None
        self.recording_dir(recording_id).mkdir(parents=True, exist_ok=True)
        fsync_dir(self.rec_dir)
        return recording_id

    def recording_dir(self, recording_id: int) -> Path:
        """The directory holding this recording's segment files."""
        return self.rec_dir / str(recording_id)

    def segment_path(self, recording_id: int, seq: int) -> Path:
        """The final name of segment ``seq``; write it at ``temp_path()`` of this first."""
        return self.recording_dir(recording_id) / f"{seq:06d}{SEGMENT_SUFFIX}"

    def add_segment(
        self, recording_id: int, *, seq: int, path: Path, start_pts: int, end_pts: int, frames: int
    ) -> SegmentInfo:
        """Index a complete, durable segment file covering pts ``[start_pts, end_pts)``."""
        self._check_writable()
        if end_pts <= start_pts or frames <= 0:
            raise SpoolError(f"empty segment {seq} of recording {recording_id}")
        rec = self.recording(recording_id)
        size = Path(path).stat().st_size
        start_mono, end_mono = rec.mono_at(start_pts), rec.mono_at(end_pts)
        offset_s: float | None = None
        if self.timeline is None:
            start_wall, end_wall = rec.wall_at(start_pts), rec.wall_at(end_pts)
        else:
            # The wall clock as set now, carried back along the monotonic clock: a step
            # since the recording began moves this segment's device time, and its offset
            # with it, so its server time stays where the footage really is.
            start_wall, offset_s = self.timeline.stamp(start_mono)
            end_wall = start_wall + (rec.wall_at(end_pts) - rec.wall_at(start_pts))
        offset_us = None if offset_s is None else round(offset_s * 1_000_000)
        shift = offset_us or 0
        with self._lock:
            self._db.execute(
                """INSERT INTO segments (recording_id, seq, path, start_pts, end_pts,
                       start_wall_us, end_wall_us, frames, size, offset_us, start_server_us,
                       end_server_us)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    recording_id,
                    seq,
                    self._rel(path),
                    start_pts,
                    end_pts,
                    _to_us(start_wall),
                    _to_us(end_wall),
                    frames,
                    size,
                    offset_us,
                    _to_us(start_wall) - shift,
                    _to_us(end_wall) - shift,
                ),
            )
        return SegmentInfo(
            recording_id=recording_id,
            seq=seq,
            path=Path(path),
            start_wall=start_wall,
            end_wall=end_wall,
            start_mono=start_mono,
            end_mono=end_mono,
            frames=frames,
            size=size,
            start_pts=start_pts,
            end_pts=end_pts,
            offset_s=offset_s,
        )

    def end_recording(self, recording_id: int, *, ended_wall: datetime) -> None:
        """Mark a recording finished at ``ended_wall``."""
        self._check_writable()
        with self._lock:
            self._db.execute(
                "UPDATE recordings SET ended_wall_us = ? WHERE id = ?",
                (_to_us(ended_wall), recording_id),
            )

    def delete_recording(self, recording_id: int) -> None:
        """Forget a recording and delete its files (retention, or after its cuts are acked)."""
        self._check_writable()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM segments WHERE recording_id = ?", (recording_id,))
            self._db.execute("DELETE FROM recordings WHERE id = ?", (recording_id,))
            self._db.execute("COMMIT")
        # Index first, files second: a crash in between leaves orphans that _recover removes.
        shutil.rmtree(self.recording_dir(recording_id), ignore_errors=True)

    # -- reading --------------------------------------------------------------------------

    def recording(self, recording_id: int) -> RecordingInfo:
        """One recording's parameters and anchor; ``SpoolError`` if unknown."""
        with self._lock:
            row = self._db.execute(
                """SELECT id, session_id, width, height, fps, codec, tb_num, tb_den, extradata,
                       started_wall_us, started_mono, ended_wall_us
                   FROM recordings WHERE id = ?""",
                (recording_id,),
            ).fetchone()
        if row is None:
            raise SpoolError(f"no recording {recording_id} in {self.root}")
        return _recording_from_row(row)

    def recordings(self) -> list[RecordingInfo]:
        """Every recording, oldest first."""
        with self._lock:
            rows = self._db.execute(
                """SELECT id, session_id, width, height, fps, codec, tb_num, tb_den, extradata,
                       started_wall_us, started_mono, ended_wall_us
                   FROM recordings ORDER BY id"""
            ).fetchall()
        return [_recording_from_row(row) for row in rows]

    def recording_sizes(self) -> dict[int, int]:
        """Bytes of every recording, from the index (no walk of the disk)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT recording_id, SUM(size) FROM segments GROUP BY recording_id"
            ).fetchall()
        return {int(rid): int(size) for rid, size in rows}

    def segments(self, recording_id: int) -> list[SegmentInfo]:
        """All segments of one recording, in order."""
        return self._segments_where("s.recording_id = ?", (recording_id,))

    def segments_between(self, start: datetime, end: datetime) -> list[SegmentInfo]:
        """Segments whose device wall time overlaps ``[start, end]``, ordered by start time."""
        return self._segments_where(
            "s.start_wall_us < ? AND s.end_wall_us > ?", (_to_us(end), _to_us(start))
        )

    def segments_in_server_window(
        self, start: datetime, end: datetime, fallback_offset_s: float = 0.0
    ) -> list[SegmentInfo]:
        """Segments whose server time overlaps ``[start, end]`` (server UTC), ordered by
        server time; a segment indexed without an offset is mapped with ``fallback_offset_s``.
        """
        shift = round(fallback_offset_s * 1_000_000)
        lo, hi = _to_us(start), _to_us(end)
        # The lower bound on the start lets the index skip everything older (a segment is
        # seconds long; MAX_SEGMENT_US is a generous cap).
        found = self._segments_where(
            """(s.offset_us IS NOT NULL AND s.start_server_us < ? AND s.start_server_us > ?
                AND s.end_server_us > ?)
               OR (s.offset_us IS NULL AND s.start_wall_us < ? AND s.start_wall_us > ?
                AND s.end_wall_us > ?)""",
            (hi, lo - MAX_SEGMENT_US, lo, hi + shift, lo + shift - MAX_SEGMENT_US, lo + shift),
        )
        return sorted(
            found,
            key=lambda seg: (seg.server_span(fallback_offset_s)[0], seg.recording_id, seg.seq),
        )

    def _segments_where(self, where: str, args: tuple[object, ...]) -> list[SegmentInfo]:
        with self._lock:
            rows = self._db.execute(
                f"""SELECT s.recording_id, s.seq, s.path, s.start_wall_us, s.end_wall_us,
                        s.frames, s.size, s.start_pts, s.end_pts, r.started_mono, r.tb_num,
                        r.tb_den, s.offset_us
                    FROM segments s JOIN recordings r ON r.id = s.recording_id
                    WHERE {where}
                    ORDER BY s.start_wall_us, s.recording_id, s.seq""",
                args,
            ).fetchall()
        result = []
        for rid, seq, path, sw, ew, frames, size, spts, epts, mono0, num, den, off in rows:
            tb = Fraction(num, den)
            result.append(
                SegmentInfo(
                    recording_id=rid,
                    seq=seq,
                    path=self.root / path,
                    start_wall=_from_us(sw),
                    end_wall=_from_us(ew),
                    start_mono=mono0 + float(spts * tb),
                    end_mono=mono0 + float(epts * tb),
                    frames=frames,
                    size=size,
                    start_pts=spts,
                    end_pts=epts,
                    offset_s=None if off is None else off / 1_000_000,
                )
            )
        return result

    def close(self) -> None:
        """Close the index and release the lock."""
        with self._lock:
            self._db.close()
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recording_from_row(row: tuple[Any, ...]) -> RecordingInfo:
    rid, session, width, height, fps, codec, num, den, extra, sw, smono, ew = row
    return RecordingInfo(
        recording_id=rid,
        session_id=session,
        width=width,
        height=height,
        fps=fps,
        codec=codec,
        time_base=Fraction(num, den),
        extradata=bytes(extra),
        started_wall=_from_us(sw),
        started_mono=smono,
        ended_wall=None if ew is None else _from_us(ew),
    )
