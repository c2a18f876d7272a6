"""Photo↔session matching: table tests on both sides of every threshold."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from common.geo import EARTH_MEAN_RADIUS_M, Coordinate, Datum, convert, distance_m
from ingest_server.rules.photo_match import (
    PhotoFacts,
    PhotoKind,
    PhotoMatch,
    photo_badness,
    photo_match,
)
from ingest_server.rules.session import ClassroomFacts, SessionFacts

SHANGHAI = ZoneInfo("Asia/Shanghai")
ROOM_AT = Coordinate(39.9042, 116.4074)  # Beijing, WGS-84
ROOM = ClassroomFacts("room-1", ROOM_AT)
START = datetime(2024, 5, 6, 9, 0, tzinfo=SHANGHAI)
SESSION = SessionFacts(
    session_id="s-1",
    classroom_id="room-1",
    device_id="dev-1",
    lecturer_id="lec-1",
    scheduled_start=START,
    preset_duration_s=90 * 60,
)
MIN = timedelta(minutes=1)
S = timedelta(seconds=1)


def north_of(origin: Coordinate, metres: float) -> Coordinate:
    """A WGS-84 point ``metres`` due north of ``origin`` (exact on the haversine sphere)."""
    return Coordinate(origin.lat + math.degrees(metres / EARTH_MEAN_RADIUS_M), origin.lon)


def photo(
    *,
    kind: PhotoKind = PhotoKind.OPENING,
    at: datetime = START,
    where: Coordinate | None = ROOM_AT,
    lecturer: str = "lec-1",
) -> PhotoFacts:
    return PhotoFacts("p-1", lecturer, kind, at, where)


# ---------------------------------------------------------------- photos: time


@pytest.mark.parametrize(
    ("kind", "session", "taken", "in_time", "delta_s"),
    [
        (PhotoKind.OPENING, SESSION, START, True, 0),
        (PhotoKind.OPENING, SESSION, START + 899 * S, True, 899),
        (PhotoKind.OPENING, SESSION, START + 900 * S, True, 900),  # inclusive
        (PhotoKind.OPENING, SESSION, START + 901 * S, False, 901),
        (PhotoKind.OPENING, SESSION, START - 900 * S, True, -900),
        (PhotoKind.OPENING, SESSION, START - 901 * S, False, -901),
        # the actual open wins over the schedule
        (PhotoKind.OPENING, replace(SESSION, opened_at=START + 20 * MIN), START, False, -1200),
        (
            PhotoKind.OPENING,
            replace(SESSION, opened_at=START + 20 * MIN),
            START + 20 * MIN,
            True,
            0,
        ),
        # closing against the scheduled end, then against the actual close
        (PhotoKind.CLOSING, SESSION, START + 90 * MIN + 900 * S, True, 900),
        (PhotoKind.CLOSING, SESSION, START + 90 * MIN + 901 * S, False, 901),
        (PhotoKind.CLOSING, SESSION, START + 75 * MIN - 1 * S, False, -901),
        (
            PhotoKind.CLOSING,
            replace(SESSION, closed_at=START + 60 * MIN),
            START + 75 * MIN,
            True,
            900,
        ),
        (
            PhotoKind.CLOSING,
            replace(SESSION, closed_at=START + 60 * MIN),
            START + 75 * MIN + S,
            False,
            901,
        ),
        # an opening photo at the closing time is not an opening photo
        (PhotoKind.OPENING, SESSION, START + 90 * MIN, False, 5400),
    ],
)
def test_photo_time(kind, session, taken, in_time, delta_s):
    match = photo_match(photo(kind=kind, at=taken), session, ROOM)
    assert match.in_time is in_time
    assert match.time_delta_s == pytest.approx(delta_s)
    assert match.in_range


@pytest.mark.parametrize(("tolerance_s", "offset_s", "in_time"), [(60, 60, True), (60, 61, False)])
def test_photo_time_tolerance_is_a_parameter(tolerance_s, offset_s, in_time):
    match = photo_match(photo(at=START + offset_s * S), SESSION, ROOM, tolerance_s=tolerance_s)
    assert match.in_time is in_time
    assert match.tolerance_s == tolerance_s


# ---------------------------------------------------------------- photos: place


@pytest.mark.parametrize(
    ("metres", "radius", "in_range"),
    [
        (0, 100, True),
        (99, 100, True),
        (101, 100, False),
        (99.9, 100, True),
        (100.1, 100, False),
        (149, 150, True),
        (151, 150, False),
        (700, 100, False),
    ],
)
def test_photo_distance_both_sides_of_the_radius(metres, radius, in_range):
    room = replace(ROOM, radius_m=radius)
    match = photo_match(photo(where=north_of(ROOM_AT, metres)), SESSION, room)
    assert match.in_range is in_range
    assert match.distance_m == pytest.approx(metres, abs=1e-6)
    assert match.radius_m == radius


def test_photo_at_exactly_the_radius_is_in_range():
    where = north_of(ROOM_AT, 100)
    exact = distance_m(where, ROOM_AT)
    assert photo_match(photo(where=where), SESSION, replace(ROOM, radius_m=exact)).in_range
    assert not photo_match(
        photo(where=where), SESSION, replace(ROOM, radius_m=math.nextafter(exact, 0))
    ).in_range


NEAR = north_of(ROOM_AT, 50)  # 50 m from the room, WGS-84
NEAR_GCJ = convert(NEAR, Datum.GCJ02)
NEAR_BD = convert(NEAR, Datum.BD09)


@pytest.mark.parametrize(
    ("where", "in_range"),
    [
        (NEAR, True),
        (NEAR_GCJ, True),  # an AMap/WeChat location: in range once converted
        (NEAR_BD, True),  # a Baidu location: likewise
        (Coordinate(NEAR_GCJ.lat, NEAR_GCJ.lon, Datum.WGS84), False),  # datum lost: ~550 m off
        (Coordinate(NEAR_BD.lat, NEAR_BD.lon, Datum.WGS84), False),
        (Coordinate(NEAR_BD.lat, NEAR_BD.lon, Datum.GCJ02), False),  # wrong datum named
    ],
    ids=["wgs84", "gcj02", "bd09", "gcj-as-wgs", "bd-as-wgs", "bd-as-gcj"],
)
def test_photo_datums_are_converted_before_measuring(where, in_range):
    match = photo_match(photo(where=where), SESSION, ROOM)
    assert match.in_range is in_range
    if in_range:
        assert match.distance_m == pytest.approx(50, abs=2)
    else:
        assert match.distance_m is not None and match.distance_m > 300


def test_classroom_given_in_gcj02_too():
    room = ClassroomFacts("room-1", convert(ROOM_AT, Datum.GCJ02))
    assert photo_match(photo(where=NEAR_BD), SESSION, room).distance_m == pytest.approx(50, abs=2)


def test_photo_without_location_is_never_in_range():
    match = photo_match(photo(where=None), SESSION, ROOM)
    assert match.distance_m is None
    assert not match.in_range and match.in_time and not match.matches


@pytest.mark.parametrize(("lecturer", "matches"), [("lec-1", True), ("lec-2", False)])
def test_photo_lecturer(lecturer, matches):
    match = photo_match(photo(lecturer=lecturer), SESSION, ROOM)
    assert match.lecturer_matches is matches
    assert match.matches is matches


def test_photo_against_another_classroom_is_a_caller_error():
    with pytest.raises(ValueError, match="room-1"):
        photo_match(photo(), SESSION, replace(ROOM, classroom_id="room-2"))


@pytest.mark.parametrize("zone", [SHANGHAI, UTC], ids=["shanghai", "utc"])
def test_photos_around_midnight(zone):
    start = datetime(2024, 5, 6, 23, 30, tzinfo=zone)
    session = replace(SESSION, scheduled_start=start, preset_duration_s=3600)
    closing_ok = photo(kind=PhotoKind.CLOSING, at=datetime(2024, 5, 7, 0, 40, tzinfo=zone))
    closing_late = photo(kind=PhotoKind.CLOSING, at=datetime(2024, 5, 7, 0, 45, 1, tzinfo=zone))
    opening_ok = photo(at=datetime(2024, 5, 6, 23, 20, tzinfo=zone))
    assert photo_match(closing_ok, session, ROOM).time_delta_s == 600
    assert photo_match(closing_ok, session, ROOM).matches
    assert not photo_match(closing_late, session, ROOM).in_time
    assert photo_match(opening_ok, session, ROOM).matches
    # The same instant given in another zone is the same instant.
    in_utc = photo(kind=PhotoKind.CLOSING, at=closing_ok.taken_at.astimezone(UTC))
    assert photo_match(in_utc, session, ROOM) == photo_match(closing_ok, session, ROOM)


def test_photo_badness_prefers_the_best_fit():
    good = PhotoMatch(True, True, 10.0, 30.0)
    far = PhotoMatch(True, False, 500.0, 0.0)
    late_and_far = PhotoMatch(False, False, 500.0, 2000.0)
    nowhere = PhotoMatch(True, False, None, 0.0)
    ranked = sorted([late_and_far, nowhere, far, good], key=photo_badness)
    assert ranked == [good, far, nowhere, late_and_far]


def test_session_properties():
    assert SESSION.scheduled_end == START + 90 * MIN
    assert SESSION.start == START and SESSION.end == START + 90 * MIN
    moved = replace(SESSION, opened_at=START + MIN, closed_at=START + 80 * MIN)
    assert moved.start == START + MIN and moved.end == START + 80 * MIN
    assert SESSION.scheduled_end.tzinfo is UTC


# ---------------------------------------------------------------- typed-in facts, pair, reuse

from ingest_server.rules.photo_match import (  # noqa: E402
    OtherSession,
    PictureDistance,
    PictureUse,
    app_fields_accepted,
    double_bookings,
    earlier_use,
    photo_pair,
)


@pytest.mark.parametrize(
    ("delay_s", "accepted"), [(0, True), (600, True), (601, False), (-600, True), (-601, False)]
)
def test_app_typed_fields_count_only_when_uploaded_in_time(delay_s: int, accepted: bool) -> None:
    typed = replace(photo(), time_source="app", received_at=START + delay_s * S)
    assert app_fields_accepted(typed, 600.0) is accepted
    match = photo_match(typed, SESSION, ROOM, app_upload_window_s=600.0)
    assert match.app_time_accepted is accepted and match.app_place_accepted is None
    assert match.upload_delay_s == delay_s
    assert app_fields_accepted(replace(typed, received_at=None)) is False


def test_the_pair_wants_the_closing_photo_after_the_opening_one() -> None:
    opening = photo(at=START)
    for gap_min, ok in ((90, True), (90 + 30, True), (90 + 31, False), (0, False), (-1, False)):
        closing = photo(kind=PhotoKind.CLOSING, at=START + gap_min * MIN)
        pair = photo_pair(opening, closing, SESSION, tolerance_s=900.0)
        assert pair.order_ok is ok, gap_min
        assert pair.expected_s == 90 * 60


def test_the_pair_sees_one_picture_by_bytes_or_signature() -> None:
    sig = "p2:" + "0" * 16 + ":" + "1" * 64 + ":" + "1" * 64 * 49
    other = "p2:" + "f" * 16 + ":" + "e" * 64 + ":" + "e" * 64 * 49
    a = replace(photo(), sha256="a" * 64, signature=sig)
    closing = replace(a, kind=PhotoKind.CLOSING, taken_at=START + 90 * MIN)
    assert photo_pair(a, closing, SESSION).same == PictureDistance(0, 42)
    assert photo_pair(a, replace(closing, sha256="b" * 64), SESSION).same is not None
    different = replace(closing, sha256="b" * 64, signature=other)
    assert photo_pair(a, different, SESSION).same is None


def use(session: str, photo_id: str, received: datetime, sha: str = "a" * 64) -> PictureUse:
    return PictureUse(session, photo_id, sha, sha[:16], received)


def test_only_the_later_use_of_a_picture_is_the_reuse() -> None:
    honest = use("s-honest", "1", START)
    thief = use("s-thief", "2", START + 10 * MIN)
    unrelated = use("s-other", "3", START - MIN, sha="c" * 64)
    found = earlier_use(thief, [honest, unrelated])
    assert found is not None and found.first == honest and found.distance.bits == 0
    assert earlier_use(honest, [thief, unrelated]) is None
    # Received in the same instant: the one stored first (lower id) is the original.
    tie = use("s-tie", "5", START)
    assert earlier_use(tie, [honest]) is not None
    assert earlier_use(honest, [tie]) is None
    # A picture repeated inside its own session is the pair rule's business, not reuse.
    assert earlier_use(thief, [use("s-thief", "1", START)]) is None


FAR = north_of(ROOM_AT, 20_000)
OTHER_ROOM = ClassroomFacts("room-2", FAR)


def other_session(start: datetime, minutes: int = 90, photos: tuple = ()) -> OtherSession:
    facts = replace(
        SESSION,
        session_id="s-2",
        classroom_id="room-2",
        scheduled_start=start,
        preset_duration_s=minutes * 60,
    )
    return OtherSession(facts, OTHER_ROOM, photos)


def test_one_lecturer_in_two_classrooms_at_once() -> None:
    own = [photo(at=START), photo(kind=PhotoKind.CLOSING, at=START + 90 * MIN)]
    # Overlapping sessions, by more than the tolerance: double.
    found = double_bookings(SESSION, ROOM, own, [other_session(START + 30 * MIN)])
    assert [(f.other_session, f.basis, round(f.distance_m)) for f in found] == [
        ("s-2", "sessions", 20_000)
    ]
    # Back to back, 15 min of changeover: not double.
    assert double_bookings(SESSION, ROOM, own, [other_session(START + 75 * MIN)]) == []
    assert double_bookings(SESSION, ROOM, own, [other_session(START + 74 * MIN)]) != []
    # A photo taken while the other session was well under way (its timetable drifted).
    late = [photo(kind=PhotoKind.CLOSING, at=START + 4 * 60 * MIN)]
    found = double_bookings(SESSION, ROOM, late, [other_session(START + 3 * 60 * MIN)])
    assert [f.basis for f in found] == ["photo"]
    # Photos 20 km apart a minute apart: double, whatever the timetable says.
    theirs = (replace(photo(at=START + MIN, where=FAR), photo_id="q"),)
    away = other_session(START - 10 * 60 * MIN, photos=theirs)
    found = double_bookings(SESSION, ROOM, own, [away])
    assert [(f.basis, f.seconds) for f in found] == [("photos", 60.0)]
    # ...but an hour apart is a drive, not a double booking.
    theirs = (replace(photo(at=START - 60 * MIN, where=FAR), photo_id="q"),)
    assert double_bookings(SESSION, ROOM, own, [other_session(START - 600 * MIN, 1, theirs)]) == []
    # The same classroom is not two places.
    same_room = replace(other_session(START), classroom=ROOM)
    same_room = replace(same_room, session=replace(same_room.session, classroom_id="room-1"))
    assert double_bookings(SESSION, ROOM, own, [same_room]) == []
