"""The device's clock offset from the server, so server-UTC windows map onto the spool.

Only exchanges the device timed itself teach the offset, NTP-style: a request leaves at
monotonic ``sent``, the answer carrying the server's time ``s`` arrives at ``received``, so
the server read ``s`` somewhere in between. The estimate is kept as *server time minus
monotonic time* (``k``), not as wall minus server: a step of the device's own wall clock
(NTP regained, a Pi without RTC setting its clock mid-class) changes ``wall - monotonic`` and
so moves the offset ``wall - server = (wall - mono) - k`` with it, while ``k`` stays put.
A retained timetable or a redelivered command says when the server *sent* it, not when the
device asked, so they never feed the estimate (a timetable retained 14 h gave +50,400 s).

Among recent samples the one with the smallest uncertainty wins (half its round trip plus
the source's resolution, growing with age by the crystal's drift). A sample that would move
the estimate by more than ``max_jump_s`` is held back until an independent one (another
source, or another exchange with a different round trip) agrees with it. A system clock the
kernel calls synchronised (NTP, chrony) is preferred outright: the offset is then ~0 and
server samples only confirm it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common.clock import Clock, to_utc

log = logging.getLogger(__name__)

# Crystal drift between the device's monotonic clock and the server, bounded generously.
DRIFT_PER_S = 50e-6
# Two samples agree when they differ by less than their uncertainties plus this.
AGREEMENT_S = 2.0
# A held-back sample waits this long for a second source to agree.
PENDING_FOR_S = 3600.0
# The offset is said to have changed (a new epoch, for events about the past) beyond this.
EPOCH_STEP_S = 1.0
# A restored estimate from another boot: its wall clock may have drifted meanwhile.
REBOOT_UNCERTAINTY_S = 2.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SyncProbe = Callable[[], "SystemSync | None"]


def _seconds(value: datetime) -> float:
    return (to_utc(value) - _EPOCH).total_seconds()


def _datetime(seconds: float) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class SystemSync:
    """What the kernel says of the system clock: synchronised, and its maximum error."""

    synced: bool
    max_error_s: float


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h); ctypes lays out the padding between int and long fields.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("reserved", ctypes.c_int * 11),
    ]


_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


@functools.cache
def _libc() -> ctypes.CDLL:
    # find_library runs ldconfig: once per process, not once per reading.
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def kernel_clock_sync() -> SystemSync | None:
    """The kernel's word on the system clock (``adjtimex`` read-only, as ``timedatectl``
    does); None where it cannot be asked (not Linux)."""
    try:
        libc = _libc()
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    synced = state != _TIME_ERROR and not (timex.status & _STA_UNSYNC)
    return SystemSync(synced=synced, max_error_s=timex.maxerror / 1e6)


def kernel_boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str | None:
    """This boot's id: the monotonic clock only means something within one boot."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One timed exchange: the other side read ``server_s`` (epoch seconds) while the
    device's monotonic clock ran from ``sent_mono`` to ``received_mono``."""

    server_s: float
    sent_mono: float
    received_mono: float
    source: str
    resolution_s: float = 0.0  # e.g. 1 s for network time given to the whole second

    @property
    def round_trip_s(self) -> float:
        return max(0.0, self.received_mono - self.sent_mono)

    @property
    def mid_mono(self) -> float:
        return (self.sent_mono + self.received_mono) / 2

    @property
    def server_minus_mono(self) -> float:
        """``k``: server time at monotonic 0 on this boot."""
        return self.server_s - self.mid_mono

    def uncertainty_at(self, mono: float) -> float:
        """How far off ``k`` may be when used at monotonic ``mono``."""
        return self.round_trip_s / 2 + self.resolution_s + DRIFT_PER_S * abs(mono - self.mid_mono)


def independent(a: ClockSample, b: ClockSample) -> bool:
    """Two samples that cannot share one stale cause: different sources, or different
    exchanges of one source with different round trips."""
    if a.source != b.source:
        return True
    return a.sent_mono != b.sent_mono and abs(a.round_trip_s - b.round_trip_s) > 1e-6


def agree(a: ClockSample, b: ClockSample) -> bool:
    """Do ``a`` and ``b`` tell the same ``k``, within their uncertainties?"""
    later = max(a.mid_mono, b.mid_mono)
    slack = a.uncertainty_at(later) + b.uncertainty_at(later) + AGREEMENT_S
    return abs(a.server_minus_mono - b.server_minus_mono) <= slack


def best_sample(samples: list[ClockSample], mono: float) -> ClockSample | None:
    """The sample least uncertain at ``mono`` (the smallest round trip, if equally recent)."""
    return min(samples, key=lambda s: s.uncertainty_at(mono), default=None)


def is_jump(current: ClockSample | None, candidate: ClockSample, max_jump_s: float) -> bool:
    """Would ``candidate`` move the estimate by more than ``max_jump_s`` (beyond what the
    current estimate's own uncertainty allows)?"""
    if current is None:
        return False
    moved = abs(candidate.server_minus_mono - current.server_minus_mono)
    return moved > max_jump_s + current.uncertainty_at(candidate.mid_mono)


@dataclass(frozen=True, slots=True)
class OffsetReading:
    """The offset as of one moment: device clock minus server clock."""

    offset_s: float | None
    source: str | None
    uncertainty_s: float | None
    synced: bool | None


class ClockOffset:
    """Device clock minus server clock, in seconds, from timed exchanges (thread-safe).

    ``sync_probe`` says whether the system clock is synchronised (``kernel_clock_sync`` on
    a device; tests inject their own). ``boot_id`` tells whether a stored estimate's
    monotonic anchor still holds. ``restored`` is what ``to_json`` gave before a restart;
    ``on_change`` is called with the new ``to_json()`` whenever the estimate changes.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        sync_probe: SyncProbe | None = None,
        boot_id: str | None = None,
        max_jump_s: float = 300.0,
        window: int = 16,
        restored: dict[str, Any] | None = None,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.clock = clock
        self.sync_probe = sync_probe or (lambda: None)
        self.boot_id = boot_id
        self.max_jump_s = max_jump_s
        self.on_change = on_change
        self.refused = 0  # samples held back as jumps
        self.disagreements = 0  # server samples that contradict a synchronised system clock
        self._samples: deque[ClockSample] = deque(maxlen=window)
        self._pending: deque[ClockSample] = deque(maxlen=8)
        self._system: ClockSample | None = None  # the synchronised system clock as a sample
        self._restored: ClockSample | None = None
        # (device wall epoch s from, offset, device wall epoch s last seen): which offset held
        # while the device clock read what, for events reported late.
        self._history: list[tuple[float, float, float]] = []
        self._noted_mono: float | None = None
        self._lock = threading.RLock()
        self._sync: SystemSync | None = None
        self._sync_read_mono: float | None = None
        self._persisted: tuple[str, float] | None = None
        if restored:
            self._restore(restored)

    # -- reading the clocks ----------------------------------------------------------------

    def _wall_minus_mono(self) -> tuple[float, float]:
        mono = self.clock.monotonic()
        return _seconds(self.clock.now()) - mono, mono

    def _system_sync(self, mono: float) -> SystemSync | None:
        # adjtimex is a cheap syscall, but the offset is read several times a second.
        if self._sync_read_mono is None or abs(mono - self._sync_read_mono) >= 5.0:
            self._sync, self._sync_read_mono = self.sync_probe(), mono
        return self._sync

    def _best(self, mono: float, w: float) -> ClockSample | None:
        sync = self._system_sync(mono)
        if sync is not None and sync.synced:
            # Server time is the wall clock itself now: anchor k there.
            self._system = ClockSample(w + mono, mono, mono, "system", sync.max_error_s)
            return self._system
        candidates = list(self._samples)
        if self._system is not None:
            candidates.append(self._system)
        if not candidates and self._restored is not None:
            candidates.append(self._restored)
        return best_sample(candidates, mono)

    def reading(self) -> OffsetReading:
        """The estimate now (offset None before any source)."""
        with self._lock:
            w, mono = self._wall_minus_mono()
            best = self._best(mono, w)
            sync = self._sync
            if best is None:
                return OffsetReading(None, None, None, sync.synced if sync else None)
            offset = w - best.server_minus_mono
            self._note_epoch(w + mono, mono, offset)
            self._maybe_persist(best, offset)
            return OffsetReading(
                offset, best.source, best.uncertainty_at(mono), sync.synced if sync else None
            )

    @property
    def seconds(self) -> float | None:
        """Device clock minus server clock now, or None before any source."""
        return self.reading().offset_s

    @property
    def source(self) -> str | None:
        return self.reading().source

    def or_zero(self) -> float:
        value = self.seconds
        return value if value is not None else 0.0

    def stamp(self, mono: float) -> tuple[datetime, float | None]:
        """The device wall time of monotonic ``mono`` (as the wall clock is set now) and the
        offset valid for it: what the spool writes beside each segment."""
        with self._lock:
            w, _ = self._wall_minus_mono()
            return _datetime(mono + w), self.seconds

    def at_wall(self, at: datetime) -> float | None:
        """The offset that held when the device clock read ``at`` (an event reported late);
        the current one when the history does not reach back that far."""
        now = self.seconds
        when = _seconds(at)
        with self._lock:
            # Newest first: after a step back the same wall time may have been read twice.
            for since, offset, until in reversed(self._history):
                if since <= when <= until + EPOCH_STEP_S:
                    return offset
        return now

    def _note_epoch(self, wall_s: float, mono: float, offset: float) -> None:
        last_mono, self._noted_mono = self._noted_mono, mono
        if self._history:
            since, held, until = self._history[-1]
            if abs(held - offset) < EPOCH_STEP_S:
                self._history[-1] = (since, held, wall_s)
                return
            if last_mono is not None:
                # The old setting of the wall clock ran on with the monotonic clock until now.
                self._history[-1] = (since, held, until + (mono - last_mono))
        self._history.append((wall_s, offset, wall_s))
        del self._history[:-16]

    # -- learning ----------------------------------------------------------------------------

    def observe_exchange(
        self,
        server_time: datetime,
        sent_mono: float,
        received_mono: float,
        *,
        source: str = "server",
        resolution_s: float = 0.0,
    ) -> bool:
        """The other side said ``server_time`` in answer to a request sent at monotonic
        ``sent_mono`` and answered at ``received_mono``. Returns whether it was taken in."""
        if received_mono < sent_mono:
            return False
        sample = ClockSample(_seconds(server_time), sent_mono, received_mono, source, resolution_s)
        with self._lock:
            w, mono = self._wall_minus_mono()
            current = self._best(mono, w)
            if self._sync is not None and self._sync.synced and current is not None:
                if not agree(current, sample):
                    self.disagreements += 1
                    log.warning(
                        "%s time disagrees with the synchronised system clock by %.1f s",
                        source,
                        sample.server_minus_mono - current.server_minus_mono,
                    )
                    return False
                # Kept for when the system clock loses its synchronisation.
                self._samples.append(sample)
                return True
            if not is_jump(current, sample, self.max_jump_s):
                self._samples.append(sample)
                self._restored = None
                self.reading()
                return True
            self._pending = deque(
                (p for p in self._pending if mono - p.mid_mono < PENDING_FOR_S), maxlen=8
            )
            partner = next(
                (p for p in self._pending if independent(p, sample) and agree(p, sample)), None
            )
            if partner is None:
                self.refused += 1
                self._pending.append(sample)
                assert current is not None
                log.warning(
                    "%s time would move the clock offset by %.1f s: held until another "
                    "source agrees",
                    source,
                    current.server_minus_mono - sample.server_minus_mono,
                )
                return False
            log.warning(
                "clock offset jumps by %.1f s: %s and %s agree",
                (current.server_minus_mono - sample.server_minus_mono) if current else 0.0,
                partner.source,
                sample.source,
            )
            self._samples.clear()
            self._pending.clear()
            self._restored = None
            self._samples.extend((partner, sample))
            self.reading()
            return True

    # -- across restarts ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any] | None:
        """The estimate as plain data for the agent's state: value, source, uncertainty and
        its monotonic/wall anchor."""
        with self._lock:
            w, mono = self._wall_minus_mono()
            best = self._best(mono, w)
            if best is None:
                return None
            return {
                "offset_s": w - best.server_minus_mono,
                "source": best.source,
                "uncertainty_s": best.uncertainty_at(mono),
                "sample": asdict(best),
                "anchor_mono": mono,
                "anchor_wall": _datetime(w + mono).isoformat(),
                "boot_id": self.boot_id,
                "history": [list(h) for h in self._history],
            }

    def _maybe_persist(self, best: ClockSample, offset: float) -> None:
        if self.on_change is None:
            return
        key = (best.source, round(best.server_minus_mono, 1))
        last = self._persisted
        if last is not None and last[0] == key[0] and abs(last[1] - key[1]) < 0.5:
            return
        self._persisted = key
        state = self.to_json()
        if state is not None:
            try:
                self.on_change(state)
            except Exception:  # a full state disk must not stop the clock
                log.exception("clock offset not persisted")

    def _restore(self, stored: dict[str, Any]) -> None:
        try:
            sample = ClockSample(**stored["sample"])
            offset = float(stored["offset_s"])
            anchor_mono = float(stored["anchor_mono"])
            anchor_wall = datetime.fromisoformat(stored["anchor_wall"])
            self._history = [(float(a), float(b), float(c)) for a, b, c in stored["history"]]
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("stored clock offset unreadable (%s); starting afresh", exc)
            return
        w, mono = self._wall_minus_mono()
        same_boot = self.boot_id is not None and stored.get("boot_id") == self.boot_id
        if same_boot and mono >= anchor_mono:
            # The monotonic clock ran on: k holds exactly (the agent only restarted).
            self._restored = sample
        else:
            # Another boot: only the offset value survives, if the wall clock kept time.
            down = max(0.0, w + mono - _seconds(anchor_wall))
            self._restored = replace(
                sample,
                server_s=w + mono - offset,
                sent_mono=mono,
                received_mono=mono,
                resolution_s=float(stored.get("uncertainty_s", 0.0))
                + REBOOT_UNCERTAINTY_S
                + DRIFT_PER_S * down,
            )
        self._persisted = (self._restored.source, round(self._restored.server_minus_mono, 1))
        log.info("clock offset restored: %.3f s (%s)", offset, sample.source)
