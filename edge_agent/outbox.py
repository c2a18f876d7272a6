"""The durable outbox: clips waiting for the server's ``complete`` ack.

A clip enters only after its file is fsynced and its manifest signed; it leaves (file deleted)
only when the server says ``complete``. The index is SQLite with ``synchronous=FULL`` so a power
cut never loses an entry the agent already reported.

A refusal that can pass (``unknown_device`` and the like) leaves the clip pending with a next
attempt time and a count of such refusals, both in the index: a restart neither resets the
backoff nor forgets the clip, and clips not waiting are sent meanwhile.

Every attempt is counted in the index before it starts (so a clip that crashes the agent is
charged too), and clips are taken least recently tried first. A clip whose attempts keep
failing is *parked* once its budget is spent: still pending, its file kept, tried again at a
slow cadence (evidence not acknowledged ``complete`` is never deleted). Parking is for clips
that are stuck, not for clips that are slow: an attempt that made progress (the server holds more
of the clip than it ever did before) unparks the clip and gives it a fresh budget; and when any
clip completes (the server is evidently back), parked clips are due at once, their budget kept,
so one that fails again without progress goes straight back to the slow cadence.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from common.clock import Clock, SystemClock
from edge_agent.spool import fsync_dir


class OutboxState(StrEnum):
    PENDING = "pending"
    COMPLETE = "complete"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    upload_id: str
    path: Path
    manifest_payload: bytes
    size: int
    chunk_size: int
    sha256: str
    state: OutboxState
    reason: str | None
    created_at: datetime
    refusals: int = 0  # refusals that can pass, in a row
    next_attempt_at: datetime | None = None  # device clock; None: now
    attempts: int = 0  # attempts started (each counted before it sends anything)
    parked: bool = False  # attempt budget spent: tried again only at the slow cadence
    last_attempt_at: datetime | None = None
    least_missing: int | None = None  # fewest bytes the server ever said it still lacked


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    upload_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    manifest_payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    refusals INTEGER NOT NULL DEFAULT 0,
    next_attempt_us INTEGER,
    last_attempt_us INTEGER,
    parked INTEGER NOT NULL DEFAULT 0,
    least_missing INTEGER
)
"""
# Columns added since the first outbox: an existing database gets them in place.
_ADDED_COLUMNS = {
    "refusals": "INTEGER NOT NULL DEFAULT 0",
    "next_attempt_us": "INTEGER",
    "last_attempt_us": "INTEGER",
    "parked": "INTEGER NOT NULL DEFAULT 0",
    "least_missing": "INTEGER",
}
_COLUMNS = (
    "upload_id, path, manifest_payload, size, chunk_size, sha256, state, reason, created_at,"
    " refusals, next_attempt_us, attempts, parked, last_attempt_us, least_missing"
)
# Round robin: clips never tried first (oldest first), then the least recently tried.
_TURN_ORDER = "ORDER BY last_attempt_us IS NOT NULL, last_attempt_us, created_at, upload_id"


def _to_us(value: datetime) -> int:
    return round(value.timestamp() * 1_000_000)


def _from_us(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, tz=UTC)


class Outbox:
    """Pending uploads, their files under ``root``, their index in ``root/outbox.sqlite3``."""

    def __init__(self, root: Path, clock: Clock | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.clock = clock or SystemClock()
        self._db = sqlite3.connect(
            root / "outbox.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._upgrade()
        self._drop_orphans()

    def _upgrade(self) -> None:
        have = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        for name, decl in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")

    def _drop_orphans(self) -> None:
        """Files a power cut left between the cut and the outbox insert are not evidence yet."""
        known = {row[0] for row in self._db.execute("SELECT path FROM outbox")}
        for path in self.root.iterdir():
            if path.suffix in (".mp4", ".jpg", ".part") and str(path) not in known:
                path.unlink(missing_ok=True)

    def file_path(self, upload_id: str, suffix: str = ".mp4") -> Path:
        """Where the clip of ``upload_id`` lives while it waits."""
        return self.root / f"{upload_id}{suffix}"

    def enqueue(
        self,
        upload_id: str,
        path: Path,
        manifest_payload: bytes,
        *,
        size: int,
        chunk_size: int,
        sha256: str,
    ) -> OutboxItem:
        """Record a durable, signed clip as pending."""
        now = self.clock.now().isoformat()
        self._db.execute(
            "INSERT INTO outbox (upload_id, path, manifest_payload, size, chunk_size, sha256,"
            " state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                upload_id,
                str(path),
                manifest_payload,
                size,
                chunk_size,
                sha256,
                OutboxState.PENDING.value,
                now,
                now,
            ),
        )
        item = self.get(upload_id)
        assert item is not None
        return item

    def get(self, upload_id: str) -> OutboxItem | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE upload_id = ?", (upload_id,)
        ).fetchone()
        return self._item(row) if row else None

    def pending(self) -> list[OutboxItem]:
        """Pending uploads, oldest first, whether or not they wait for a retry."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state = ? ORDER BY created_at, upload_id",
            (OutboxState.PENDING.value,),
        ).fetchall()
        return [self._item(r) for r in rows]

    def due(self, max_wait: timedelta, parked_wait: timedelta | None = None) -> list[OutboxItem]:
        """Pending uploads to try now, in turn (never tried first, then least recently tried):
        those not waiting for a retry, those whose retry time has come, and those told to wait
        longer than ``max_wait`` (``parked_wait`` for parked ones) from now (the wall clock
        stepped back since: a wait that long is not what was meant)."""
        now = self.clock.now()
        longest = now + max_wait
        longest_parked = now + (parked_wait if parked_wait is not None else max_wait)
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state = ? AND (next_attempt_us IS NULL"
            " OR next_attempt_us <= ? OR (parked = 0 AND next_attempt_us > ?)"
            f" OR (parked != 0 AND next_attempt_us > ?)) {_TURN_ORDER}",
            (OutboxState.PENDING.value, _to_us(now), _to_us(longest), _to_us(longest_parked)),
        ).fetchall()
        return [self._item(r) for r in rows]

    def next_due_at(self) -> datetime | None:
        """When the earliest clip waiting for a retry may be tried again (device clock)."""
        row = self._db.execute(
            "SELECT min(next_attempt_us) FROM outbox WHERE state = ?",
            (OutboxState.PENDING.value,),
        ).fetchone()
        return _from_us(row[0]) if row and row[0] is not None else None

    def defer(self, upload_id: str, reason: str, delay: timedelta) -> datetime:
        """The server refused ``upload_id`` for now: keep it pending, count the refusal, and try
        again after ``delay``; return when."""
        at = self.clock.now() + delay
        self._db.execute(
            "UPDATE outbox SET refusals = refusals + 1, next_attempt_us = ?, reason = ?,"
            " updated_at = ? WHERE upload_id = ? AND state = ?",
            (
                _to_us(at),
                reason,
                self.clock.now().isoformat(),
                upload_id,
                OutboxState.PENDING.value,
            ),
        )
        return at

    def attempt_failed(
        self,
        upload_id: str,
        reason: str,
        delay: timedelta,
        *,
        max_attempts: int,
        parked_delay: timedelta,
        refused: bool = False,
        progressed: bool = False,
    ) -> datetime:
        """An attempt at ``upload_id`` ended without ``complete``: try again after ``delay``,
        or, once ``max_attempts`` attempts are spent (and this one made no progress), park it
        and try again after ``parked_delay``. An attempt that made progress unparks the clip
        and resets its budget (it is slow, not stuck). ``refused``: a refusal that can pass,
        also counted as such. Return when the next attempt is due."""
        item = self.get(upload_id)
        if item is None or item.state is not OutboxState.PENDING:
            return self.clock.now()
        park = not progressed and (item.parked or item.attempts >= max_attempts)
        at = self.clock.now() + (parked_delay if park else delay)
        self._db.execute(
            "UPDATE outbox SET refusals = refusals + ?, next_attempt_us = ?, reason = ?,"
            " parked = ?, attempts = CASE WHEN ? THEN 0 ELSE attempts END, updated_at = ?"
            " WHERE upload_id = ? AND state = ?",
            (
                1 if refused else 0,
                _to_us(at),
                reason,
                1 if park else 0,
                progressed,
                self.clock.now().isoformat(),
                upload_id,
                OutboxState.PENDING.value,
            ),
        )
        return at

    def note_missing(self, upload_id: str, missing: int) -> bool:
        """The server says it still lacks ``missing`` bytes of ``upload_id``: record it, and
        return whether that is fewer than it ever said before (bytes got across since, in this
        attempt or an earlier one cut short). Only a new low counts, so a server that keeps
        losing what it had cannot pass for progress for ever."""
        cursor = self._db.execute(
            "UPDATE outbox SET least_missing = ? WHERE upload_id = ? AND state = ?"
            " AND (least_missing IS NULL OR least_missing > ?)",
            (missing, upload_id, OutboxState.PENDING.value, missing),
        )
        item = self.get(upload_id)
        return cursor.rowcount > 0 and item is not None and missing < item.size

    def count_parked(self) -> int:
        """Pending uploads whose attempt budget is spent (the heartbeat reports them)."""
        return int(
            self._db.execute(
                "SELECT count(*) FROM outbox WHERE state = ? AND parked != 0",
                (OutboxState.PENDING.value,),
            ).fetchone()[0]
        )

    def count(self, state: OutboxState = OutboxState.PENDING) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM outbox WHERE state = ?", (state.value,)
            ).fetchone()[0]
        )

    def note_attempt(self, upload_id: str) -> int:
        """Count an attempt before it sends anything (durably: an attempt that crashes the
        agent is charged too); return the attempts so far."""
        now = self.clock.now()
        self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_attempt_us = ?, updated_at = ?"
            " WHERE upload_id = ?",
            (_to_us(now), now.isoformat(), upload_id),
        )
        item = self.get(upload_id)
        return item.attempts if item is not None else 0

    def mark_complete(self, upload_id: str) -> None:
        """The server holds the clip: record that, then free the file. The server is evidently
        up and storing, so parked clips are due at once (their budget kept: one that fails
        again without progress goes straight back to the slow cadence)."""
        item = self.get(upload_id)
        if item is None:
            return
        self._set_state(upload_id, OutboxState.COMPLETE, None)
        self._db.execute(
            "UPDATE outbox SET next_attempt_us = ? WHERE state = ? AND parked != 0",
            (_to_us(self.clock.now()), OutboxState.PENDING.value),
        )
        item.path.unlink(missing_ok=True)
        fsync_dir(item.path.parent)

    def mark_rejected(self, upload_id: str, reason: str) -> None:
        """The server will never take this clip. The file is kept for people to look at."""
        self._set_state(upload_id, OutboxState.REJECTED, reason)

    def _set_state(self, upload_id: str, state: OutboxState, reason: str | None) -> None:
        self._db.execute(
            "UPDATE outbox SET state = ?, reason = ?, updated_at = ? WHERE upload_id = ?",
            (state.value, reason, self.clock.now().isoformat(), upload_id),
        )

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _item(row: tuple[Any, ...]) -> OutboxItem:
        return OutboxItem(
            upload_id=row[0],
            path=Path(row[1]),
            manifest_payload=bytes(row[2]),
            size=row[3],
            chunk_size=row[4],
            sha256=row[5],
            state=OutboxState(row[6]),
            reason=row[7],
            created_at=datetime.fromisoformat(row[8]),
            refusals=row[9],
            next_attempt_at=_from_us(row[10]) if row[10] is not None else None,
            attempts=row[11],
            parked=bool(row[12]),
            last_attempt_at=_from_us(row[13]) if row[13] is not None else None,
            least_missing=row[14],
        )
