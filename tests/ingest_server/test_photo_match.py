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
