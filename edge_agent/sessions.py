"""Which class session should be recording now: pure decisions over the timetable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from common.commands import Schedule, ScheduledSession

# A session opened by command without a preset duration still ends: nobody teaches 6 hours.
MAX_SESSION = timedelta(hours=6)


def due_session(
    schedule: Schedule | None, server_now: datetime, closed: set[str]
) -> ScheduledSession | None:
    """The timetabled session that covers ``server_now`` and was not closed early."""
    if schedule is None:
        return None
    for session in sorted(schedule.sessions, key=lambda s: s.start):
        if session.start <= server_now < session.end and session.session_id not in closed:
            return session
    return None


@dataclass(frozen=True, slots=True)
class OpenSession:
    session_id: str
    source: str  # "schedule" or "command"
    planned_end: datetime | None  # server UTC
    opened_at: datetime  # device clock


def should_close(session: OpenSession, server_now: datetime, device_now: datetime) -> bool:
    """A session ends at its planned end, or after ``MAX_SESSION`` when it has none."""
    if session.planned_end is not None:
        return server_now >= session.planned_end
    return device_now - session.opened_at >= MAX_SESSION
