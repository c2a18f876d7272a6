"""A session and its classroom as the rules see them: plain frozen facts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from common.clock import to_utc
from common.geo import Coordinate

DEFAULT_RADIUS_M = 100.0


@dataclass(frozen=True, slots=True)
class ClassroomFacts:
    """Where a classroom is, and how far from it a photo may be taken."""

    classroom_id: str
    location: Coordinate
    radius_m: float = DEFAULT_RADIUS_M


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """A session as the timetable and the device's reports know it.

    ``opened_at``/``closed_at`` are when the device reported it opened/closed (server time),
    ``None`` until it has.
    """

    session_id: str
    classroom_id: str
    device_id: str
    lecturer_id: str
    scheduled_start: datetime
    preset_duration_s: float
    opened_at: datetime | None = None
    closed_at: datetime | None = None

    @property
    def scheduled_end(self) -> datetime:
        """Scheduled start plus the preset duration."""
        return to_utc(self.scheduled_start) + timedelta(seconds=self.preset_duration_s)

    @property
    def start(self) -> datetime:
        """When the session actually opened, else when it was scheduled to."""
        return to_utc(self.opened_at or self.scheduled_start)

    @property
    def end(self) -> datetime:
        """When the session actually closed, else when it was scheduled to."""
        return to_utc(self.closed_at) if self.closed_at else self.scheduled_end
