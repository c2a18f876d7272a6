"""Which class session should be recording now: pure decisions over the timetable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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


def seconds_to_next_change(
    schedule: Schedule | None,
    session: OpenSession | None,
    server_now: datetime,
    device_now: datetime,
) -> float | None:
    """Seconds until the timetable may decide something new: the open session's end, or the
    next start or end of a timetabled session; None when nothing is planned."""
    planned = schedule.sessions if schedule else []
    ahead = [moment - server_now for s in planned for moment in (s.start, s.end)]
    if session is not None:
        ahead.append(end_on_device_clock(session, server_now, device_now) - device_now)
    future = [delta.total_seconds() for delta in ahead if delta > timedelta(0)]
    return min(future) if future else None


def end_on_device_clock(
    session: OpenSession, server_now: datetime, device_now: datetime
) -> datetime:
    """When ``session`` ends, read on the device clock: its planned end (server UTC, mapped
    through the present difference of the two clocks), else ``MAX_SESSION`` after it opened."""
    if session.planned_end is not None:
        return session.planned_end + (device_now - server_now)
    return session.opened_at + MAX_SESSION


Gap = tuple[datetime, datetime]


def recorded_seconds(opened_at: datetime, closed_at: datetime, gaps: list[Gap]) -> float:
    """Seconds recorded between ``opened_at`` and ``closed_at``: the span minus the union of
    ``gaps`` inside it (gaps may overlap: a camera loss open at a power cut, then the outage)."""
    clipped = sorted(
        (max(a, opened_at), min(b, closed_at)) for a, b in gaps if b > opened_at and a < closed_at
    )
    missing = 0.0
    current: Gap | None = None
    for start, end in clipped:
        if current is not None and start <= current[1]:
            current = (current[0], max(current[1], end))
            continue
        if current is not None:
            missing += (current[1] - current[0]).total_seconds()
        current = (start, end)
    if current is not None:
        missing += (current[1] - current[0]).total_seconds()
    return max(0.0, (closed_at - opened_at).total_seconds() - missing)


def stopped_report(
    *,
    reason: str,
    opened_at: datetime,
    closed_at: datetime,
    gaps: list[Gap],
    recording_ids: list[int],
) -> dict[str, Any]:
    """What a ``session_stopped`` event says: its ``recorded_s`` always agrees with its ``gaps``
    (the server checks both against its own sum of started, stopped and gap events)."""
    return {
        "reason": reason,
        "opened_at": opened_at.isoformat(),
        "closed_at": closed_at.isoformat(),
        "recorded_s": recorded_seconds(opened_at, closed_at, gaps),
        "gaps": [[a.isoformat(), b.isoformat()] for a, b in sorted(gaps)],
        "recording_ids": recording_ids,
    }
