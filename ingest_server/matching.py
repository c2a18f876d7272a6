"""Which clip and which photo belong to which session (DESIGN.md §1.3, §1.7): pure functions.

Plain frozen facts in, plain answers out; the integrator reads the facts from the DB. All
datetimes are aware (naive ones are taken as UTC); clip cut bounds are in the device's clock
and are mapped to server time through the offset the device stated in its manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from common.clock import to_utc
from common.geo import Coordinate, distance_m

DEFAULT_RADIUS_M = 100.0
DEFAULT_PHOTO_TOLERANCE_S = 900.0
# Cuts snap to keyframes (1–2 s) and the measured clock offset is good to a second or so; a
# minute of slack keeps honest clips matched without letting one from another session in.
DEFAULT_CLIP_TOLERANCE_S = 60.0


class PhotoKind(StrEnum):
    """Which of the lecturer's two photos: at the opening or at the closing of the class."""

    OPENING = "opening"
    CLOSING = "closing"


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


@dataclass(frozen=True, slots=True)
class ClipFacts:
    """What a clip's (verified) manifest says about it.

    ``cut_start``/``cut_end`` are in the device's clock; ``clock_offset_s`` is the device
    clock minus the server clock as the device measured it (``Manifest.clock_offset_s``).
    """

    upload_id: str
    device_id: str
    cut_start: datetime
    cut_end: datetime
    clock_offset_s: float = 0.0
    session_id: str | None = None
    requested_start: datetime | None = None
    requested_end: datetime | None = None


@dataclass(frozen=True, slots=True)
class PhotoFacts:
    """A lecturer's photo: who sent it, which kind, when and where it was taken.

    ``location`` is ``None`` when neither EXIF nor the app gave one.
    """

    photo_id: str
    lecturer_id: str
    kind: PhotoKind
    taken_at: datetime
    location: Coordinate | None


@dataclass(frozen=True, slots=True)
class PhotoMatch:
    """How a photo fits a session.

    ``time_delta_s`` is signed (positive: taken after the reference time); ``distance_m`` is
    ``None`` when the photo has no location. ``tolerance_s`` and ``radius_m`` are the limits it
    was judged by, so a reason sentence can quote them.
    """

    in_time: bool
    in_range: bool
    distance_m: float | None
    time_delta_s: float
    lecturer_matches: bool = True
    tolerance_s: float = DEFAULT_PHOTO_TOLERANCE_S
    radius_m: float = DEFAULT_RADIUS_M

    @property
    def matches(self) -> bool:
        """Whether the photo fits in every respect."""
        return self.lecturer_matches and self.in_time and self.in_range


def clip_server_bounds(clip: ClipFacts) -> tuple[datetime, datetime]:
    """The clip's cut bounds in server time (device time minus the stated offset)."""
    offset = timedelta(seconds=clip.clock_offset_s)
    return to_utc(clip.cut_start) - offset, to_utc(clip.cut_end) - offset


def clip_matches_session(
    clip: ClipFacts, session: SessionFacts, *, tolerance_s: float = DEFAULT_CLIP_TOLERANCE_S
) -> bool:
    """Whether ``clip`` is evidence for ``session``.

    It must come from the session's classroom's device, not name another session, lie (in
    server time) within the session widened by ``tolerance_s`` on each side, and, when it was
    cut for a requested window, overlap that window.
    """
    if clip.device_id != session.device_id:
        return False
    if clip.session_id is not None and clip.session_id != session.session_id:
        return False
    start, end = clip_server_bounds(clip)
    slack = timedelta(seconds=tolerance_s)
    if start < session.start - slack or end > session.end + slack:
        return False
    if clip.requested_start is None or clip.requested_end is None:
        return True
    return start < to_utc(clip.requested_end) and end > to_utc(clip.requested_start)


def photo_reference_time(kind: PhotoKind, session: SessionFacts) -> datetime:
    """The time a photo of ``kind`` should be near: the actual open/close, else the scheduled."""
    return session.start if kind == PhotoKind.OPENING else session.end


def photo_match(
    photo: PhotoFacts,
    session: SessionFacts,
    classroom: ClassroomFacts,
    *,
    tolerance_s: float = DEFAULT_PHOTO_TOLERANCE_S,
) -> PhotoMatch:
    """How ``photo`` fits ``session`` held in ``classroom``.

    In time when ``|taken_at - reference| <= tolerance_s``; in range when the distance to the
    classroom, after converting both to WGS-84, is ``<= classroom.radius_m`` (both bounds
    inclusive). A photo without a location is never in range.
    """
    if classroom.classroom_id != session.classroom_id:
        raise ValueError(
            f"session {session.session_id} is held in {session.classroom_id}, "
            f"not {classroom.classroom_id}"
        )
    delta = (to_utc(photo.taken_at) - photo_reference_time(photo.kind, session)).total_seconds()
    distance = None if photo.location is None else distance_m(photo.location, classroom.location)
    return PhotoMatch(
        in_time=abs(delta) <= tolerance_s,
        in_range=distance is not None and distance <= classroom.radius_m,
        distance_m=distance,
        time_delta_s=delta,
        lecturer_matches=photo.lecturer_id == session.lecturer_id,
        tolerance_s=tolerance_s,
        radius_m=classroom.radius_m,
    )


def photo_badness(match: PhotoMatch) -> tuple[int, float, float]:
    """A sort key: the photo that fits best first (fewest failures, then nearest in time/space).

    Lets a verdict judge a session by the best of several photos of one kind.
    """
    failures = (not match.lecturer_matches) + (not match.in_time) + (not match.in_range)
    distance = math.inf if match.distance_m is None else match.distance_m
    return failures, abs(match.time_delta_s), distance
