"""The durable outbox: clips waiting for the server's ``complete`` ack.

A clip enters only after its file is fsynced and its manifest signed; it leaves (file deleted)
only when the server says ``complete``. The index is SQLite with ``synchronous=FULL`` so a power
cut never loses an entry the agent already reported.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
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
    updated_at TEXT NOT NULL
)
"""


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
        self._drop_orphans()

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
            "SELECT upload_id, path, manifest_payload, size, chunk_size, sha256, state, reason,"
            " created_at FROM outbox WHERE upload_id = ?",
            (upload_id,),
        ).fetchone()
        return self._item(row) if row else None

    def pending(self) -> list[OutboxItem]:
        """Pending uploads, oldest first."""
        rows = self._db.execute(
            "SELECT upload_id, path, manifest_payload, size, chunk_size, sha256, state, reason,"
            " created_at FROM outbox WHERE state = ? ORDER BY created_at, upload_id",
            (OutboxState.PENDING.value,),
        ).fetchall()
        return [self._item(r) for r in rows]

    def count(self, state: OutboxState = OutboxState.PENDING) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM outbox WHERE state = ?", (state.value,)
            ).fetchone()[0]
        )

    def note_attempt(self, upload_id: str) -> None:
        self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, updated_at = ? WHERE upload_id = ?",
            (self.clock.now().isoformat(), upload_id),
        )

    def mark_complete(self, upload_id: str) -> None:
        """The server holds the clip: record that, then free the file."""
        item = self.get(upload_id)
        if item is None:
            return
        self._set_state(upload_id, OutboxState.COMPLETE, None)
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
        )
