"""The agent's own durable state beside the spool: commands seen, sessions, events not yet
delivered, bytes sent per day and month, runtime settings. SQLite, WAL, synchronous=FULL."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    cmd_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    received_at TEXT NOT NULL,
    reply BLOB
);
CREATE TABLE IF NOT EXISTS command_inbox (
    cmd_id TEXT PRIMARY KEY,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    planned_start TEXT,
    planned_end TEXT,
    windows INTEGER NOT NULL DEFAULT 3,
    opened_at TEXT,
    closed_at TEXT,
    cuts_acked INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS events_refused (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS traffic (
    period TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS upload_sessions (
    upload_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS session_gaps (
    session_id TEXT NOT NULL,
    start TEXT NOT NULL,
    "end" TEXT NOT NULL,
    PRIMARY KEY (session_id, start, "end")
);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class SessionRow:
    session_id: str
    planned_start: datetime | None
    planned_end: datetime | None
    windows: int
    opened_at: datetime | None
    closed_at: datetime | None
    cuts_acked: int
    source: str

    @property
    def pinned(self) -> bool:
        """Evidence still owed: fewer acknowledged cuts than windows the server will ask for."""
        return self.cuts_acked < self.windows


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class AgentState:
    """Thread-safe access to ``state_dir/agent.sqlite3``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # -- commands: each cmd_id executed once, answered as often as asked --------------------

    def command_reply(self, cmd_id: str) -> tuple[bool, bytes | None]:
        """(seen before, the reply sent then if any)."""
        row = self._exec("SELECT reply FROM commands WHERE cmd_id = ?", (cmd_id,)).fetchone()
        return (row is not None, bytes(row[0]) if row and row[0] is not None else None)

    def command_received(self, cmd_id: str, type_: str, at: datetime) -> None:
        self._exec(
            "INSERT OR IGNORE INTO commands (cmd_id, type, received_at) VALUES (?, ?, ?)",
            (cmd_id, type_, at.isoformat()),
        )

    def command_answered(self, cmd_id: str, reply: bytes) -> None:
        self._exec("UPDATE commands SET reply = ? WHERE cmd_id = ?", (reply, cmd_id))
        self._exec("DELETE FROM command_inbox WHERE cmd_id = ?", (cmd_id,))

    def command_queued(self, cmd_id: str, payload: bytes) -> None:
        """Keep a delivered command until it is answered: paho acknowledges it to the broker
        as soon as the message callback returns, so from then on only this row remembers it."""
        self._exec(
            "INSERT OR IGNORE INTO command_inbox (cmd_id, payload) VALUES (?, ?)",
            (cmd_id, payload),
        )

    def queued_commands(self) -> list[bytes]:
        """Commands delivered but not yet answered, in arrival order."""
        rows = self._exec("SELECT payload FROM command_inbox ORDER BY rowid").fetchall()
        return [bytes(r[0]) for r in rows]

    # -- sessions ----------------------------------------------------------------------------

    def upsert_session(
        self,
        session_id: str,
        *,
        source: str,
        windows: int,
        planned_start: datetime | None = None,
        planned_end: datetime | None = None,
    ) -> None:
        self._exec(
            """INSERT INTO sessions (session_id, planned_start, planned_end, windows, source)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT(session_id) DO UPDATE SET
                   planned_start = COALESCE(excluded.planned_start, planned_start),
                   planned_end = COALESCE(excluded.planned_end, planned_end),
                   windows = excluded.windows""",
            (
                session_id,
                planned_start.isoformat() if planned_start else None,
                planned_end.isoformat() if planned_end else None,
                windows,
                source,
            ),
        )

    def mark_session(
        self,
        session_id: str,
        *,
        opened_at: datetime | None = None,
        closed_at: datetime | None = None,
    ) -> None:
        if opened_at:
            self._exec(
                "UPDATE sessions SET opened_at = COALESCE(opened_at, ?) WHERE session_id = ?",
                (opened_at.isoformat(), session_id),
            )
        if closed_at:
            self._exec(
                "UPDATE sessions SET closed_at = ? WHERE session_id = ?",
                (closed_at.isoformat(), session_id),
            )

    def session(self, session_id: str) -> SessionRow | None:
        row = self._exec(
            "SELECT session_id, planned_start, planned_end, windows, opened_at,"
            " closed_at, cuts_acked, source FROM sessions WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        if row is None:
            return None
        return SessionRow(
            row[0], _dt(row[1]), _dt(row[2]), row[3], _dt(row[4]), _dt(row[5]), row[6], row[7]
        )

    def unclosed_sessions(self) -> list[SessionRow]:
        """Sessions opened and never closed (a stop or a power cut came first), oldest first."""
        rows = self._exec(
            "SELECT session_id FROM sessions WHERE opened_at IS NOT NULL AND closed_at IS NULL"
            " ORDER BY opened_at"
        ).fetchall()
        return [s for (sid,) in rows if (s := self.session(sid)) is not None]

    def add_session_gap(self, session_id: str, start: datetime, end: datetime) -> None:
        """Keep a reported recording gap with its session, so a restart does not forget it."""
        self._exec(
            'INSERT OR IGNORE INTO session_gaps (session_id, start, "end") VALUES (?, ?, ?)',
            (session_id, start.isoformat(), end.isoformat()),
        )

    def session_gaps(self, session_id: str) -> list[tuple[datetime, datetime]]:
        """Every gap reported for ``session_id``, across restarts, in time order."""
        rows = self._exec(
            'SELECT start, "end" FROM session_gaps WHERE session_id = ?', (session_id,)
        ).fetchall()
        return sorted((datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in rows)

    def link_upload(self, upload_id: str, session_id: str) -> None:
        self._exec(
            "INSERT OR IGNORE INTO upload_sessions (upload_id, session_id) VALUES (?, ?)",
            (upload_id, session_id),
        )

    def upload_acked(self, upload_id: str) -> str | None:
        """Count an acknowledged cut against its session; return the session id."""
        row = self._exec(
            "DELETE FROM upload_sessions WHERE upload_id = ? RETURNING session_id", (upload_id,)
        ).fetchone()
        if row is None:
            return None
        self._exec(
            "UPDATE sessions SET cuts_acked = cuts_acked + 1 WHERE session_id = ?", (row[0],)
        )
        return str(row[0])

    # -- events: durable until the server acknowledges them (event_ack) ---------------------

    def push_event(self, payload: bytes) -> int:
        cur = self._exec("INSERT INTO events (payload) VALUES (?)", (payload,))
        return int(cur.lastrowid or 0)

    def pending_events(self, limit: int = 100) -> list[tuple[int, bytes]]:
        rows = self._exec(
            "SELECT seq, payload FROM events ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def event_delivered(self, seq: int) -> None:
        self._exec("DELETE FROM events WHERE seq = ?", (seq,))

    def event_refused(self, seq: int, reason: str) -> None:
        """Set an event the server will never store aside: kept, with the server's reason,
        and no longer sent (it would hold up every later event)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO events_refused (seq, payload, reason)"
                    " SELECT seq, payload, ? FROM events WHERE seq = ?",
                    (reason, seq),
                )
                self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def refused_events(self) -> list[tuple[int, bytes, str]]:
        """Events the server refused, oldest first: (seq, payload, reason)."""
        rows = self._exec("SELECT seq, payload, reason FROM events_refused ORDER BY seq")
        return [(int(r[0]), bytes(r[1]), str(r[2])) for r in rows.fetchall()]

    # -- traffic counters ----------------------------------------------------------------------

    def add_traffic(self, at: datetime, nbytes: int) -> None:
        for period in (at.strftime("%Y-%m-%d"), at.strftime("%Y-%m")):
            self._exec(
                "INSERT INTO traffic (period, bytes) VALUES (?, ?) ON CONFLICT(period)"
                " DO UPDATE SET bytes = bytes + excluded.bytes",
                (period, nbytes),
            )

    def traffic(self, at: datetime) -> tuple[int, int]:
        """Bytes sent on ``at``'s day and in its month."""
        out = []
        for period in (at.strftime("%Y-%m-%d"), at.strftime("%Y-%m")):
            row = self._exec("SELECT bytes FROM traffic WHERE period = ?", (period,)).fetchone()
            out.append(int(row[0]) if row else 0)
        return out[0], out[1]

    # -- small settings ------------------------------------------------------------------------

    def get(self, key: str) -> Any | None:
        row = self._exec("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Any) -> None:
        self._exec(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key)"
            " DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )
