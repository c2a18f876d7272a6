"""Which photo belongs to which session (DESIGN.md §1.7): pure functions.

Plain frozen facts in, plain answers out; the integrator reads the facts from the DB. All
datetimes are aware (naive ones are taken as UTC); clip cut bounds are in the device's clock
and are mapped to server time through the offset the device stated in its manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from common.clock import to_utc
from common.geo import Coordinate, distance_m
from ingest_server.rules.session import DEFAULT_RADIUS_M, ClassroomFacts, SessionFacts

DEFAULT_PHOTO_TOLERANCE_S = 900.0


class PhotoKind(StrEnum):
    """Which of the lecturer's two photos: at the opening or at the closing of the class."""

    OPENING = "opening"
    CLOSING = "closing"


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
