"""Which photo belongs to which session (DESIGN.md §1.7): pure functions.

Plain frozen facts in, plain answers out; the integrator reads the facts from the DB. All
datetimes are aware (naive ones are taken as UTC); clip cut bounds are in the device's clock
and are mapped to server time through the offset the device stated in its manifest.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from common.clock import to_utc
from common.geo import Coordinate, distance_m
from ingest_server.rules.session import DEFAULT_RADIUS_M, ClassroomFacts, SessionFacts

DEFAULT_PHOTO_TOLERANCE_S = 900.0
# App-typed time and place count when the upload arrives within this long of the stated time.
DEFAULT_APP_UPLOAD_WINDOW_S = 600.0
# Faster than this between two photos of one lecturer is being in two places at once.
DEFAULT_MAX_TRAVEL_SPEED_MS = 120 / 3.6


class PhotoKind(StrEnum):
    """Which of the lecturer's two photos: at the opening or at the closing of the class."""

    OPENING = "opening"
    CLOSING = "closing"


@dataclass(frozen=True, slots=True)
class PhotoFacts:
    """A lecturer's photo: who sent it, which kind, when and where it was taken.

    ``location`` is ``None`` when neither EXIF nor the app gave one. ``time_source`` and
    ``place_source`` say where they came from (``app``: typed into the lecturer's app, not read
    from the file); ``received_at`` is when the server received the upload (its own clock).
    ``sha256`` and ``signature`` identify the picture (``ingest_server.photo_hash``).
    """

    photo_id: str
    lecturer_id: str
    kind: PhotoKind
    taken_at: datetime
    location: Coordinate | None
    time_source: str = "exif"
    place_source: str = "exif"
    received_at: datetime | None = None
    sha256: str = ""
    signature: str = ""


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
    # Typed-in time/place: accepted (True) or not (False) by ``app_fields_accepted``; None when
    # read from the file. ``upload_delay_s``: received_at - taken_at, None when unknown.
    app_time_accepted: bool | None = None
    app_place_accepted: bool | None = None
    upload_delay_s: float | None = None
    app_upload_window_s: float = DEFAULT_APP_UPLOAD_WINDOW_S

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
    app_upload_window_s: float = DEFAULT_APP_UPLOAD_WINDOW_S,
) -> PhotoMatch:
    """How ``photo`` fits ``session`` held in ``classroom``.

    In time when ``|taken_at - reference| <= tolerance_s``; in range when the distance to the
    classroom, after converting both to WGS-84, is ``<= classroom.radius_m`` (both bounds
    inclusive). A photo without a location is never in range. Typed-in time and place are
    judged by ``app_fields_accepted``.
    """
    if classroom.classroom_id != session.classroom_id:
        raise ValueError(
            f"session {session.session_id} is held in {session.classroom_id}, "
            f"not {classroom.classroom_id}"
        )
    delta = (to_utc(photo.taken_at) - photo_reference_time(photo.kind, session)).total_seconds()
    distance = None if photo.location is None else distance_m(photo.location, classroom.location)
    accepted = app_fields_accepted(photo, app_upload_window_s)
    delay = (
        None
        if photo.received_at is None
        else (to_utc(photo.received_at) - to_utc(photo.taken_at)).total_seconds()
    )
    return PhotoMatch(
        in_time=abs(delta) <= tolerance_s,
        in_range=distance is not None and distance <= classroom.radius_m,
        distance_m=distance,
        time_delta_s=delta,
        lecturer_matches=photo.lecturer_id == session.lecturer_id,
        tolerance_s=tolerance_s,
        radius_m=classroom.radius_m,
        app_time_accepted=accepted if photo.time_source == "app" else None,
        app_place_accepted=accepted if photo.place_source == "app" else None,
        upload_delay_s=delay,
        app_upload_window_s=app_upload_window_s,
    )


def app_fields_accepted(photo: PhotoFacts, window_s: float = DEFAULT_APP_UPLOAD_WINDOW_S) -> bool:
    """Whether time/place typed into the app can stand in for EXIF.

    Only when the upload reached the server within ``window_s`` of the stated ``taken_at``
    (either way: a phone clock may run a little ahead): then the app's values were read live,
    and the server's own clock vouches for the time. Typed in later, they are only a claim.
    """
    if photo.received_at is None:
        return False
    delay = (to_utc(photo.received_at) - to_utc(photo.taken_at)).total_seconds()
    return abs(delay) <= window_s


def photo_badness(match: PhotoMatch) -> tuple[int, float, float]:
    """A sort key: the photo that fits best first (fewest failures, then nearest in time/space).

    Lets a verdict judge a session by the best of several photos of one kind.
    """
    failures = (not match.lecturer_matches) + (not match.in_time) + (not match.in_range)
    distance = math.inf if match.distance_m is None else match.distance_m
    return failures, abs(match.time_delta_s), distance


# ---------------------------------------------------------------- the same picture

# Measured by bench/photo_reuse.py on the 19 photographs scikit-image ships, each resized to
# 50–90 %, re-encoded at quality 50–90, cropped by 1–5 % and all three at once (779 copies):
# a copy came at most 28 bits from its original, different photographs at least 92 apart
# (14,193 pairs), and the stereo pair (one scene from a viewpoint a few cm away, as an honest
# lecturer photographing the same room from the same spot on another day) 56 apart. 42 sits
# midway between the worst copy and the stereo pair: 14 bits of margin either way, 49 to the
# closest different photograph.
REUSE_MAX_BITS = 42
# Rows stored before signatures (a bare 64-bit whole-frame pHash): the old rule, same bytes or
# at most 2 bits, which finds re-encoded and resized copies but not cropped ones.
LEGACY_REUSE_MAX_BITS = 2
_HEX64 = 16
_HEX256 = 64


@dataclass(frozen=True, slots=True)
class _Signature:
    legacy: int
    anchor: int | None
    probes: tuple[int, ...]


@functools.lru_cache(maxsize=16384)
def _parse_signature(text: str) -> _Signature | None:
    """A stored signature (``p2:...``) or a legacy 16-hex pHash; None when unreadable."""
    try:
        if len(text) == _HEX64:
            return _Signature(int(text, 16), None, ())
        version, legacy, anchor, probes = text.split(":")
        if version != "p2" or len(legacy) != _HEX64 or len(anchor) != _HEX256:
            return None
        if not probes or len(probes) % _HEX256:
            return None
        return _Signature(
            int(legacy, 16),
            int(anchor, 16),
            tuple(int(probes[i : i + _HEX256], 16) for i in range(0, len(probes), _HEX256)),
        )
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PictureDistance:
    """How far apart two pictures are, in bits, and the limit they were judged by."""

    bits: int
    max_bits: int

    @property
    def same(self) -> bool:
        """Whether they are the same picture (resized, re-encoded or lightly cropped)."""
        return self.bits <= self.max_bits


def picture_distance(a: str, b: str) -> PictureDistance | None:
    """The distance between two stored signatures; None when either cannot be read.

    Two current signatures: the nearest anchor↔probe pair, either way round (256 bits, limit
    ``REUSE_MAX_BITS``). A legacy 64-bit pHash on either side: the 64-bit whole-frame hashes
    (limit ``LEGACY_REUSE_MAX_BITS``), so old rows keep the rule they were stored under.
    """
    sa, sb = _parse_signature(a), _parse_signature(b)
    if sa is None or sb is None:
        return None
    if sa.anchor is None or sb.anchor is None:
        return PictureDistance((sa.legacy ^ sb.legacy).bit_count(), LEGACY_REUSE_MAX_BITS)
    bits = min(
        min((sa.anchor ^ p).bit_count() for p in sb.probes),
        min((sb.anchor ^ p).bit_count() for p in sa.probes),
    )
    return PictureDistance(bits, REUSE_MAX_BITS)


def _same(sha_a: str, sig_a: str, sha_b: str, sig_b: str) -> PictureDistance | None:
    if sha_a and sha_a == sha_b:
        return PictureDistance(0, REUSE_MAX_BITS)
    distance = picture_distance(sig_a, sig_b) if sig_a and sig_b else None
    return distance if distance is not None and distance.same else None


def same_picture(a: PhotoFacts, b: PhotoFacts) -> PictureDistance | None:
    """How far ``b`` is from being ``a``'s picture, when it is: same bytes (0 bits) or
    signatures within the limit; None when they are different pictures or unreadable."""
    return _same(a.sha256, a.signature, b.sha256, b.signature)


# ---------------------------------------------------------------- the pair of one session


@dataclass(frozen=True, slots=True)
class PhotoPair:
    """The opening and closing photo of one session side by side.

    ``gap_s`` = closing.taken_at - opening.taken_at; ``expected_s`` is the class length (actual
    open→close when known, else the preset duration); ``same`` says whether the two are one
    picture (and how far apart, in bits).
    """

    gap_s: float
    expected_s: float
    tolerance_s: float
    same: PictureDistance | None

    @property
    def order_ok(self) -> bool:
        """The opening photo precedes the closing one by about the class length.

        "About" is the photo tolerance at each end (each photo may be that far from its own
        end of the class), so ``|gap - expected| <= 2 * tolerance``; and never the closing
        photo first, or both at once, whatever the class length.
        """
        return self.gap_s > 0 and abs(self.gap_s - self.expected_s) <= 2 * self.tolerance_s


def photo_pair(
    opening: PhotoFacts,
    closing: PhotoFacts,
    session: SessionFacts,
    *,
    tolerance_s: float = DEFAULT_PHOTO_TOLERANCE_S,
) -> PhotoPair:
    """How the opening and closing photos of ``session`` fit each other (see ``PhotoPair``)."""
    gap = (to_utc(closing.taken_at) - to_utc(opening.taken_at)).total_seconds()
    expected = (session.end - session.start).total_seconds()
    return PhotoPair(gap, expected, tolerance_s, same_picture(opening, closing))


# ---------------------------------------------------------------- reuse across sessions


@dataclass(frozen=True, slots=True)
class PictureUse:
    """One stored use of a picture: which session and photo, when the server received it."""

    session_id: str
    photo_id: str
    sha256: str
    signature: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Reuse:
    """``photo`` repeats a picture ``first`` used earlier, ``distance`` bits apart."""

    first: PictureUse
    distance: PictureDistance


def _use_order(use: PictureUse) -> tuple[datetime, int, str]:
    number = int(use.photo_id) if use.photo_id.isdigit() else 0
    return to_utc(use.received_at), number, use.photo_id


def earlier_use(photo: PictureUse, others: Iterable[PictureUse]) -> Reuse | None:
    """The first earlier use of ``photo``'s picture in another session, if any.

    Only the later use is the fraud: the earlier, honest session whose photo was copied keeps
    its photo. "Earlier" is by ``received_at``, the server's own clock when the upload arrived
    (ties by photo id, the insert order): EXIF and typed-in times are what a copier controls,
    the moment we first held the picture is not.
    """
    found: Reuse | None = None
    for other in others:
        if other.session_id == photo.session_id or _use_order(other) >= _use_order(photo):
            continue
        distance = _same(photo.sha256, photo.signature, other.sha256, other.signature)
        if distance is not None and (found is None or _use_order(other) < _use_order(found.first)):
            found = Reuse(other, distance)
    return found


# ---------------------------------------------------------------- one lecturer, two places


@dataclass(frozen=True, slots=True)
class OtherSession:
    """Another session of the same lecturer, where it was held and the photos it has."""

    session: SessionFacts
    classroom: ClassroomFacts
    photos: tuple[PhotoFacts, ...] = ()


@dataclass(frozen=True, slots=True)
class DoubleBooking:
    """Evidence that the lecturer was in another classroom at once.

    ``basis``: ``sessions`` (the two sessions overlap by more than the tolerance), ``photo``
    (a photo of this session was taken while the other session was well under way), or
    ``photos`` (a photo of each, too far apart for the time between them). ``at`` is when;
    ``distance_m`` how far apart (classrooms, or photos for ``photos``); ``seconds`` the
    overlap, or the time between the two photos.
    """

    other_session: str
    other_classroom: str
    basis: str
    at: datetime
    distance_m: float
    seconds: float


def double_bookings(
    session: SessionFacts,
    classroom: ClassroomFacts,
    photos: Iterable[PhotoFacts],
    others: Iterable[OtherSession],
    *,
    tolerance_s: float = DEFAULT_PHOTO_TOLERANCE_S,
    max_speed_ms: float = DEFAULT_MAX_TRAVEL_SPEED_MS,
) -> list[DoubleBooking]:
    """Where the lecturer of ``session`` was also somewhere else at once (one per other session).

    Only other classrooms count. Sessions that overlap by at most ``tolerance_s`` are back to
    back, not double; a photo within ``tolerance_s`` of the other session's open or close is
    the changeover. Two photos further apart than both classrooms' radii and than
    ``max_speed_ms`` covers in the time between them put one person in two places.
    """
    own_photos = [p for p in photos if p.lecturer_id == session.lecturer_id]
    out: list[DoubleBooking] = []
    tolerance = timedelta(seconds=tolerance_s)
    for other in sorted(others, key=lambda o: o.session.session_id):
        there = other.session
        if there.session_id == session.session_id or there.classroom_id == session.classroom_id:
            continue
        rooms_apart = distance_m(classroom.location, other.classroom.location)
        found: DoubleBooking | None = None
        overlap_start = max(session.start, there.start)
        overlap_s = (min(session.end, there.end) - overlap_start).total_seconds()
        if overlap_s > tolerance_s:
            found = DoubleBooking(
                there.session_id,
                there.classroom_id,
                "sessions",
                overlap_start,
                rooms_apart,
                overlap_s,
            )
        for photo in own_photos if found is None else ():
            taken = to_utc(photo.taken_at)
            if there.start + tolerance < taken < there.end - tolerance:
                found = DoubleBooking(
                    there.session_id, there.classroom_id, "photo", taken, rooms_apart, 0.0
                )
                break
        pairs = [(p, q) for p in own_photos for q in other.photos] if found is None else []
        for mine, theirs in pairs:
            if mine.location is None or theirs.location is None:
                continue
            apart = distance_m(mine.location, theirs.location)
            seconds = abs((to_utc(mine.taken_at) - to_utc(theirs.taken_at)).total_seconds())
            if apart > classroom.radius_m + other.classroom.radius_m and (
                apart > max_speed_ms * seconds
            ):
                found = DoubleBooking(
                    there.session_id,
                    there.classroom_id,
                    "photos",
                    to_utc(mine.taken_at),
                    apart,
                    seconds,
                )
                break
        if found is not None:
            out.append(found)
    return out
