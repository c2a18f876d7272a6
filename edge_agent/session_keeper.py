"""Opening and closing class sessions on the device: by command, by the timetable, and after a
restart (resumed at once, or closed where it ended), each gap kept with its session so that its
``session_stopped`` lists them all. The decisions themselves are the pure rules of ``sessions``.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from common.clock import Clock
from common.commands import Schedule
from common.schemas import EventType
from edge_agent.events import EventQueue
from edge_agent.recording import SessionRecorder
from edge_agent.sessions import (
    OpenSession,
    due_session,
    end_on_device_clock,
    seconds_to_next_change,
    should_close,
    stopped_report,
)
from edge_agent.spool import Spool
from edge_agent.state import AgentState
from edge_agent.timesync import ClockOffset

log = logging.getLogger(__name__)


class SessionKeeper:
    """The ``SessionControl`` of a device: at most one session records at a time (``open``)."""

    def __init__(
        self,
        state: AgentState,
        spool: Spool,
        recorder: SessionRecorder,
        clock: Clock,
        offset: ClockOffset,
        events: EventQueue,
    ) -> None:
        self.state = state
        self.spool = spool
        self.recorder = recorder
        self.clock = clock
        self.offset = offset
        self.events = events
        self.open: OpenSession | None = None
        self.lock = threading.RLock()
        # The stored timetable as last read, and parsed (read twice a second, rarely changed).
        self._schedule: tuple[object, Schedule | None] = (None, None)

    def open_session(
        self,
        session_id: str,
        *,
        source: str,
        windows: int,
        planned_end: datetime | None,
        cmd_id: str | None = None,
        planned_start: datetime | None = None,
        resumed_from: datetime | None = None,
    ) -> dict[str, Any]:
        """Start recording ``session_id``; return what the ``session_started`` event says.

        ``resumed_from`` is the first opening of a session resumed after a restart: it keeps
        counting from there, and its ``session_started`` was said the first time."""
        with self.lock:
            if self.open and self.open.session_id == session_id:
                return {"already_open": True, "source": self.open.source}
            if self.open:
                self.close_session(self.open.session_id, reason="superseded", announce=True)
            now = self.clock.now()
            self.state.upsert_session(
                session_id,
                source=source,
                windows=windows,
                planned_start=planned_start,
                planned_end=planned_end,
            )
            self.state.mark_session(session_id, opened_at=now)
            self.recorder.start(session_id)
            opened_at = resumed_from or now
            self.open = OpenSession(session_id, source, planned_end, opened_at)
            data = {
                "source": source,
                "opened_at": opened_at.isoformat(),
                "planned_end": planned_end.isoformat() if planned_end else None,
            }
            log.info(
                "session %s %s (%s)", session_id, "resumed" if resumed_from else "opened", source
            )
            if cmd_id is None and resumed_from is None:
                self.events.emit(EventType.SESSION_STARTED, session_id=session_id, data=data)
            return data

    def close_session(
        self, session_id: str, *, reason: str, announce: bool = False
    ) -> dict[str, Any] | None:
        """Stop recording ``session_id``; return what the ``session_stopped`` event says, or
        ``None`` when it is not open (nothing to stop, nothing to report)."""
        with self.lock:
            if self.open is None or self.open.session_id != session_id:
                return None
            current = self.open
            self.recorder.stop()
            self.open = None
            now = self.clock.now()
            self.state.mark_session(session_id, closed_at=now)
            data = stopped_report(
                reason=reason,
                opened_at=current.opened_at,
                closed_at=now,
                # Every gap reported since the first opening, restarts included.
                gaps=self.state.session_gaps(session_id),
                recording_ids=self.recording_ids(session_id),
            )
            log.info("session %s closed (%s)", session_id, reason)
            if announce:
                self.events.emit(EventType.SESSION_STOPPED, session_id=session_id, data=data)
            return data

    def closed_at(self, session_id: str) -> datetime | None:
        """When ``session_id`` was closed on this device (device clock), if it was."""
        row = self.state.session(session_id)
        return row.closed_at if row is not None else None

    def recording_ids(self, session_id: str) -> list[int]:
        """The spool's recordings of ``session_id``, restarts included."""
        return [r.recording_id for r in self.spool.recordings() if r.session_id == session_id]

    def report_gap(self, session_id: str, start: datetime, end: datetime, reason: str) -> None:
        """Keep a gap with its session, then say it."""
        self.state.add_session_gap(session_id, start, end)
        self.events.emit(
            EventType.RECORDING_GAP,
            session_id=session_id,
            data={"start": start.isoformat(), "end": end.isoformat(), "reason": reason},
        )

    def server_now(self) -> datetime:
        """Server UTC now, as far as the clock offset knows (the device clock before any)."""
        return self.clock.now() - timedelta(seconds=self.offset.or_zero())

    def check_timetable(self) -> float | None:
        """Close the open session at its end; open the timetabled one that is due. Return the
        seconds until the timetable may decide something new (None: nothing planned)."""
        with self.lock:
            server_now, device_now = self.server_now(), self.clock.now()
            if self.open and should_close(self.open, server_now, device_now):
                self.close_session(self.open.session_id, reason="planned_end", announce=True)
            schedule = self._stored_schedule()
            closed = set()
            if schedule:
                for s in schedule.sessions:
                    if not s.start <= server_now < s.end:
                        continue  # only a session under way can be due
                    row = self.state.session(s.session_id)
                    if row and row.closed_at:
                        closed.add(s.session_id)
            due = due_session(schedule, server_now, closed)
            if due and self.open is None:
                self.open_session(
                    due.session_id,
                    source="schedule",
                    windows=due.windows,
                    planned_end=due.end,
                    planned_start=due.start,
                )
            return seconds_to_next_change(schedule, self.open, server_now, device_now)

    def _stored_schedule(self) -> Schedule | None:
        raw = self.state.get("schedule")
        if raw != self._schedule[0]:
            self._schedule = (raw, Schedule.model_validate(raw) if raw else None)
        return self._schedule[1]

    def resume_open_sessions(self) -> None:
        """A restart during a class resumes its recording at once, whatever opened it (the
        timetable may be stale, the clock offset not known yet), and reports the outage as a
        gap. A session whose end passed while the agent was down is closed and reported, the
        outage up to its end listed as a gap."""
        server_now, device_now = self.server_now(), self.clock.now()
        unclosed = self.state.unclosed_sessions()
        for row in unclosed:
            assert row.opened_at is not None
            session = OpenSession(row.session_id, row.source, row.planned_end, row.opened_at)
            last = self._last_recorded(row.session_id, row.opened_at)
            newest = row is unclosed[-1]
            if newest and not should_close(session, server_now, device_now):
                self.open_session(
                    row.session_id,
                    source=row.source,
                    windows=row.windows,
                    planned_end=row.planned_end,
                    planned_start=row.planned_start,
                    resumed_from=row.opened_at,
                )
                if device_now > last:
                    self.report_gap(row.session_id, last, device_now, "agent_restart")
            else:
                ends = end_on_device_clock(session, server_now, device_now)
                self._close_after_restart(row.session_id, row.opened_at, last, ends)

    def _last_recorded(self, session_id: str, opened_at: datetime) -> datetime:
        """The last instant the spool holds of ``session_id`` (device clock): the spool's
        recovery ends a recording cut short where its last complete segment ends."""
        ends = [
            r.ended_wall or r.started_wall
            for r in self.spool.recordings()
            if r.session_id == session_id
        ]
        return max([opened_at, *ends])

    def _close_after_restart(
        self, session_id: str, opened_at: datetime, last: datetime, ends: datetime
    ) -> None:
        # It ran until its planned end; what was not recorded since ``last`` is a gap. A
        # recording past that end (a clock offset learnt later) ends the session there.
        closed = max(last, min(ends, self.clock.now()))
        if closed > last:
            self.report_gap(session_id, last, closed, "agent_restart")
        self.state.mark_session(session_id, closed_at=closed)
        log.info("session %s ended while the agent was down; closed at %s", session_id, closed)
        self.events.emit(
            EventType.SESSION_STOPPED,
            session_id=session_id,
            at=closed,
            data=stopped_report(
                reason="agent_restart",
                opened_at=opened_at,
                closed_at=closed,
                gaps=self.state.session_gaps(session_id),
                recording_ids=self.recording_ids(session_id),
            ),
        )
