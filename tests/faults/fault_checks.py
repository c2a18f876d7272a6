"""The invariants the fault suite checks after each scenario (issue 8, item 8):

- every requested window is stored exactly once, with the sha256 of the agent's manifest (the
  clip row, the evidence file and the agent's outbox agree);
- every event applied exactly once: ``device_events`` unique per ``event_id``, none missing of
  those the agent let go of (seen at the broker), every command answered;
- nothing the agent was told was durable is lost (an upload the agent marked ``complete`` is a
  clip; its event queue drains);
- ``PRAGMA integrity_check`` is ``ok`` on the server's database and the agent's SQLite files.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fault_ledger import LEDGER

from common.commands import Command, CommandType
from edge_agent.clips import upload_id_for
from edge_agent.config import AgentConfig

if TYPE_CHECKING:
    from fault_stack import FaultStack


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until truthy; ``AssertionError`` naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def read_only(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A read-only connection to an SQLite file another process writes, closed after use."""
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10))


def integrity_problems(paths: Iterable[Path]) -> list[str]:
    """``PRAGMA integrity_check`` of each SQLite file that exists; what is not ``ok``."""
    problems = []
    for path in paths:
        if not path.exists():
            continue
        with read_only(path) as db:
            result = [r[0] for r in db.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            problems.append(f"{path}: {result[:5]}")
    return problems


def agent_db_paths(config: AgentConfig) -> list[Path]:
    return [
        config.state_dir / "agent.sqlite3",
        config.outbox_dir / "outbox.sqlite3",
        config.spool_dir / "index.sqlite3",
    ]


# -- the invariants ---------------------------------------------------------------------------


@dataclass
class Expectation:
    """What one device was asked for in a scenario: its commands, and which of them cut."""

    device_id: str
    config: AgentConfig
    commands: list[Command] = field(default_factory=list)

    @property
    def cuts(self) -> list[Command]:
        return [c for c in self.commands if c.type == CommandType.CUT]


def _outbox_rows(config: AgentConfig) -> dict[str, tuple[str, str]]:
    """upload id -> (state, sha256) as the agent's outbox has it."""
    path = config.outbox_dir / "outbox.sqlite3"
    if not path.exists():
        return {}
    with read_only(path) as db:
        return {
            r[0]: (r[1], r[2]) for r in db.execute("SELECT upload_id, state, sha256 FROM outbox")
        }


def _pending_events(config: AgentConfig) -> int:
    path = config.state_dir / "agent.sqlite3"
    if not path.exists():
        return 0
    with read_only(path) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def invariant_problems(
    stack: FaultStack, expectations: list[Expectation], *, deep: bool = True
) -> list[str]:
    """Every broken invariant, named; empty when all hold. ``deep`` also hashes the evidence
    files and runs ``PRAGMA integrity_check`` (too slow to poll)."""
    problems: list[str] = []
    with stack.db() as db:
        for exp in expectations:
            outbox = _outbox_rows(exp.config)
            for cmd in exp.cuts:
                upload_id = upload_id_for(exp.device_id, cmd.cmd_id)
                rows = db.execute(
                    "SELECT upload_id, sha256, path FROM clips WHERE device_id = ? AND cmd_id = ?",
                    (exp.device_id, cmd.cmd_id),
                ).fetchall()
                state, agent_sha = outbox.get(upload_id, (None, None))
                before = len(problems)
                if len(rows) > 1:
                    problems.append(f"{cmd.cmd_id}: stored {len(rows)} times")
                if not rows:
                    problems.append(f"{cmd.cmd_id}: no clip (agent outbox: {state})")
                    if deep:
                        LEDGER.checked_window(f"{exp.device_id}/{cmd.cmd_id}", False)
                    continue
                stored_id, sha, rel = rows[0]
                if stored_id != upload_id:
                    problems.append(f"{cmd.cmd_id}: stored as {stored_id}, cut as {upload_id}")
                if agent_sha != sha:
                    problems.append(f"{cmd.cmd_id}: server sha {sha} != agent {agent_sha}")
                file = stack.server.evidence_dir / rel
                if not deep:
                    continue
                if not file.exists():
                    problems.append(f"{cmd.cmd_id}: evidence file {rel} missing")
                elif hashlib.sha256(file.read_bytes()).hexdigest() != sha:
                    problems.append(f"{cmd.cmd_id}: evidence file does not hash to {sha}")
                LEDGER.checked_window(f"{exp.device_id}/{cmd.cmd_id}", len(problems) == before)
            # Nothing the agent was told was durable is lost.
            for upload_id, (state, sha) in outbox.items():
                if state != "complete":
                    problems.append(f"{exp.device_id}: upload {upload_id} still {state}")
                    continue
                row = db.execute(
                    "SELECT sha256 FROM clips WHERE device_id = ? AND upload_id = ?",
                    (exp.device_id, upload_id),
                ).fetchone()
                if row is None or row[0] != sha:
                    problems.append(f"{upload_id}: acked complete to the agent, not stored")
            # Events: once each, none lost, every command answered.
            stored = Counter(
                r[0]
                for r in db.execute(
                    "SELECT event_id FROM device_events WHERE device_id = ?", (exp.device_id,)
                )
            )
            dup = [e for e, n in stored.items() if n > 1]
            if dup:
                problems.append(f"{exp.device_id}: events stored twice: {dup[:5]}")
            lost = [
                f"{e.type.value}/{e.cmd_id}"
                for e in stack.wiretap.events_of(exp.device_id)
                if e.event_id not in stored
            ]
            if lost:
                problems.append(
                    f"{exp.device_id}: {len(lost)} event(s) the broker had are not "
                    f"in device_events: {lost[:8]}"
                )
            if deep:
                for event in stack.wiretap.events_of(exp.device_id):
                    n = stored.get(event.event_id, 0)
                    verdict = "ok" if n == 1 else ("lost" if n == 0 else "duplicated")
                    LEDGER.checked_event(event.event_id, verdict)
            answered = {
                r[0]
                for r in db.execute(
                    "SELECT DISTINCT cmd_id FROM device_events WHERE device_id = ?",
                    (exp.device_id,),
                )
            }
            unanswered = [c.cmd_id for c in exp.commands if c.cmd_id not in answered]
            if unanswered:
                problems.append(f"{exp.device_id}: commands without an answer: {unanswered}")
            pending = _pending_events(exp.config)
            if pending:
                problems.append(f"{exp.device_id}: {pending} event(s) never delivered")
    if not deep:
        return problems
    problems += integrity_problems([Path(stack.server.db_url.removeprefix("sqlite:///"))])
    for exp in expectations:
        problems += integrity_problems(agent_db_paths(exp.config))
    return problems


def settle(
    stack: FaultStack,
    expectations: list[Expectation],
    timeout: float,
    resend: Callable[[], None] | None = None,
) -> list[str]:
    """Wait until every invariant holds (or ``timeout``); return what still does not."""
    deadline = time.monotonic() + timeout
    last_resend = time.monotonic()
    while True:
        problems = invariant_problems(stack, expectations, deep=False)
        if not problems:
            return invariant_problems(stack, expectations)
        if time.monotonic() > deadline:
            return problems
        if resend is not None and time.monotonic() - last_resend > 4:
            resend()
            last_resend = time.monotonic()
        time.sleep(0.3)
