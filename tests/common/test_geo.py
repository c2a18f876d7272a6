"""common.geo against published conversion vectors and an independent geodesic."""

from __future__ import annotations

import math
import random

import pytest

from common.geo import (
    Coordinate,
    Datum,
    bd09_to_gcj02,
    convert,
    destination,
    distance_m,
    gcj02_to_bd09,
    gcj02_to_wgs84,
    haversine_m,
    out_of_china,
    to_wgs84,
    wgs84_to_gcj02,
)

WGS, GCJ, BD = Datum.WGS84, Datum.GCJ02, Datum.BD09

# wandergis/coordtransform, test/app.js: every function applied to (lon 116.404, lat 39.915);
# its results are quoted there to 14 decimals. Its gcj02towgs84 is the one-step approximation,
# so only the exact-form functions are compared at 1e-9°.
WANDERGIS_INPUT = (39.915, 116.404)
WANDERGIS = [
    (wgs84_to_gcj02, WGS, (39.91640428150164, 116.41024449916938)),
    (gcj02_to_bd09, GCJ, (39.92133699351021, 116.41036949371029)),
    (bd09_to_gcj02, BD, (39.90865673957631, 116.39762729119315)),
]

# googollee/eviltransform, python/test.py (also go/transform_test.go): WGS-84 → GCJ-02 pairs
# for Shanghai, Shenzhen and Beijing; its exact inverse is tested there to < 0.5 m.
EVILTRANSFORM = [
    ((31.1774276, 121.5272106), (31.17530398364597, 121.531541859215)),
    ((22.543847, 113.912316), (22.540796131694766, 113.9171764808363)),
    ((39.911954, 116.377817), (39.91334545536069, 116.38404722455657)),
]
# Real places read off real maps in each datum, to a metre or so:
# caijun/geoChina (R), man pages of wgs2gcj/bd2gcj/bd2wgs: Beijing railway station.
BEIJING_STATION = {
    WGS: (39.90105, 116.42079),
    GCJ: (39.90245, 116.42703),
    BD: (39.90851, 116.43351),
}
# BruceZhaoR/pjutils (R), tests/testthat/test-test-coordinate-tranform.R: a point in Shanghai
# from Google Earth (WGS-84), AMap/Tencent (GCJ-02) and Baidu (BD-09).
SHANGHAI_POINT = {
    WGS: (31.1601435400, 121.4295896700),
    GCJ: (31.1582470000, 121.4342040000),
    BD: (31.1646093426, 121.4406138425),
}
PUBLISHED_PLACES = {"beijing_station": BEIJING_STATION, "shanghai": SHANGHAI_POINT}


def c(lat: float, lon: float, datum: Datum = WGS) -> Coordinate:
    return Coordinate(lat, lon, datum)


@pytest.mark.parametrize(("fn", "datum", "expected"), WANDERGIS)
def test_wandergis_vectors(fn, datum, expected):
    got = fn(c(*WANDERGIS_INPUT, datum))
    assert got.lat == pytest.approx(expected[0], abs=1e-9)
    assert got.lon == pytest.approx(expected[1], abs=1e-9)


@pytest.mark.parametrize(("wgs", "gcj"), EVILTRANSFORM)
def test_eviltransform_forward_and_exact_inverse(wgs, gcj):
    forward = wgs84_to_gcj02(c(*wgs))
    assert forward.datum == GCJ
    assert (forward.lat, forward.lon) == pytest.approx(gcj, abs=1e-6)
    back = gcj02_to_wgs84(c(gcj[0], gcj[1], GCJ))
    assert back.datum == WGS
    assert haversine_m(back, c(*wgs)) < 0.5


@pytest.mark.parametrize("place", PUBLISHED_PLACES)
@pytest.mark.parametrize("src", [WGS, GCJ, BD])
@pytest.mark.parametrize("dst", [WGS, GCJ, BD])
def test_published_places_in_every_datum(place, src, dst):
    values = PUBLISHED_PLACES[place]
    got = convert(c(*values[src], src), dst)
    assert got.datum == dst
    # Values read off maps (and Baidu's approximate inverse): within a few metres, where a
    # wrong datum would be hundreds of metres off.
    assert haversine_m(got, c(*values[dst], dst)) < 3.0
    # The numbers themselves, not only the place they denote.
    assert haversine_m(c(got.lat, got.lon), c(*values[dst])) < 3.0


CITIES = {
    "Beijing": (39.9042, 116.4074),
    "Shanghai": (31.2304, 121.4737),
    "Guangzhou": (23.1291, 113.2644),
    "Chengdu": (30.5728, 104.0668),
    "Harbin": (45.8038, 126.5349),
    "Urumqi": (43.8256, 87.6168),
    "Lhasa": (29.6525, 91.1721),
    "Kunming": (25.0389, 102.7183),
    "Lanzhou": (36.0611, 103.8343),
}


@pytest.mark.parametrize("city", CITIES)
def test_gcj02_offset_is_100_to_700_m_in_chinese_cities(city):
    lat, lon = CITIES[city]
    # The same numbers read as GCJ-02 are a different place: exactly the trap of §1.7.
    offset = distance_m(c(lat, lon), c(lat, lon, GCJ))
    assert 100 < offset < 700
    # BD-09 stacks a further offset on GCJ-02.
    assert distance_m(c(lat, lon), c(lat, lon, BD)) > offset


def test_round_trip_wgs_gcj_wgs_under_half_a_metre_across_china():
    rng = random.Random(7)
    worst = 0.0
    for _ in range(2000):
        p = c(rng.uniform(18.0, 53.0), rng.uniform(74.0, 134.0))
        back = to_wgs84(wgs84_to_gcj02(p))
        worst = max(worst, haversine_m(p, back))
    assert worst < 0.01  # far better than the 0.5 m the design asks for


def test_round_trip_through_bd09_within_baidus_inverse_error():
    rng = random.Random(8)
    for _ in range(500):
        p = c(rng.uniform(18.0, 53.0), rng.uniform(74.0, 134.0))
        assert haversine_m(p, to_wgs84(convert(p, BD))) < 2.0


@pytest.mark.parametrize(
    "place",
    [
        (51.5007, -0.1246),  # London
        (35.6586, 139.7454),  # Tokyo: east of the rectangle
        (-33.8568, 151.2153),  # Sydney
        (40.6892, -74.0445),  # New York
        (0.5, 100.0),  # just south of the rectangle
        (56.0, 120.0),  # just north of it
    ],
)
def test_no_offset_outside_china(place):
    assert out_of_china(*place)
    for datum in (GCJ, BD):
        moved = convert(c(*place), datum)
        assert (moved.lat, moved.lon) == place
        assert to_wgs84(c(place[0], place[1], datum)) == c(*place)
        assert distance_m(c(*place), c(place[0], place[1], datum)) == 0.0


def test_inside_china_is_inside():
    assert not out_of_china(*CITIES["Beijing"])


def test_conversions_refuse_the_wrong_datum():
    with pytest.raises(ValueError, match="expected a gcj02"):
        gcj02_to_wgs84(c(39.9, 116.4, WGS))
    with pytest.raises(ValueError, match="expected a wgs84"):
        wgs84_to_gcj02(c(39.9, 116.4, BD))


@pytest.mark.parametrize(
    ("lat", "lon"),
    [(90.0001, 0.0), (-90.0001, 0.0), (0.0, 180.0001), (0.0, -180.0001), (math.nan, 0.0)],
)
def test_coordinate_ranges(lat, lon):
    with pytest.raises(ValueError):
        Coordinate(lat, lon)


def test_coordinate_accepts_datum_as_text():
    assert Coordinate(39.9, 116.4, "gcj02").datum is GCJ  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Coordinate(39.9, 116.4, "osgb36")  # type: ignore[arg-type]


def vincenty_m(a: Coordinate, b: Coordinate) -> float:
    """Vincenty's inverse on the WGS-84 ellipsoid: an independent geodesic for comparison."""
    f = 1 / 298.257223563
    a_axis = 6378137.0
    b_axis = a_axis * (1 - f)
    u1 = math.atan((1 - f) * math.tan(math.radians(a.lat)))
    u2 = math.atan((1 - f) * math.tan(math.radians(b.lat)))
    big_l = math.radians(b.lon - a.lon)
    lam = big_l
    for _ in range(200):
        sin_sigma = math.hypot(
            math.cos(u2) * math.sin(lam),
            math.cos(u1) * math.sin(u2) - math.sin(u1) * math.cos(u2) * math.cos(lam),
        )
        cos_sigma = math.sin(u1) * math.sin(u2) + math.cos(u1) * math.cos(u2) * math.cos(lam)
        sigma = math.atan2(sin_sigma, cos_sigma)
        sin_alpha = math.cos(u1) * math.cos(u2) * math.sin(lam) / sin_sigma
        cos2_alpha = 1 - sin_alpha**2
        cos_2sm = cos_sigma - 2 * math.sin(u1) * math.sin(u2) / cos2_alpha
        cc = f / 16 * cos2_alpha * (4 + f * (4 - 3 * cos2_alpha))
        lam_prev = lam
        lam = big_l + (1 - cc) * f * sin_alpha * (
            sigma + cc * sin_sigma * (cos_2sm + cc * cos_sigma * (-1 + 2 * cos_2sm**2))
        )
        if abs(lam - lam_prev) < 1e-13:
            break
    u_sq = cos2_alpha * (a_axis**2 - b_axis**2) / b_axis**2
    big_a = 1 + u_sq / 16384 * (4096 + u_sq * (-768 + u_sq * (320 - 175 * u_sq)))
    big_b = u_sq / 1024 * (256 + u_sq * (-128 + u_sq * (74 - 47 * u_sq)))
    d_sigma = (
        big_b
        * sin_sigma
        * (
            cos_2sm
            + big_b
            / 4
            * (
                cos_sigma * (-1 + 2 * cos_2sm**2)
                - big_b / 6 * cos_2sm * (-3 + 4 * sin_sigma**2) * (-3 + 4 * cos_2sm**2)
            )
        )
    )
    return b_axis * big_a * (sigma - d_sigma)


def dms(d: int, m: int, s: float) -> float:
    sign = -1 if d < 0 else 1
    return sign * (abs(d) + m / 60 + s / 3600)


# Geoscience Australia's worked example of Vincenty's inverse: Flinders Peak to Buninyong,
# 54 972.271 m on GRS80 (sub-millimetre from WGS-84 here).
FLINDERS_PEAK = c(dms(-37, 57, 3.72030), dms(144, 25, 29.52440))
BUNINYONG = c(dms(-37, 39, 10.15610), dms(143, 55, 35.38390))


def test_vincenty_reference_itself():
    assert vincenty_m(FLINDERS_PEAK, BUNINYONG) == pytest.approx(54972.271, abs=0.01)


def test_haversine_against_published_geodesic():
    assert haversine_m(FLINDERS_PEAK, BUNINYONG) == pytest.approx(54972.271, rel=0.005)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((39.9042, 116.4074), (39.9132, 116.4074)),  # ~1 km north in Beijing
        ((39.9042, 116.4074), (39.9042, 116.4191)),  # ~1 km east
        ((31.2304, 121.4737), (31.2368, 121.4811)),  # ~1 km north-east in Shanghai
        ((45.8038, 126.5349), (45.8047, 126.5349)),  # 100 m in Harbin
    ],
)
def test_haversine_within_half_a_percent_of_the_ellipsoid(a, b):
    pa, pb = c(*a), c(*b)
    geodesic = vincenty_m(pa, pb)
    assert haversine_m(pa, pb) == pytest.approx(geodesic, rel=0.005)
    assert haversine_m(pb, pa) == haversine_m(pa, pb)


def test_distance_converts_datums_first():
    station_wgs = c(*BEIJING_STATION[WGS])
    station_gcj = c(*BEIJING_STATION[GCJ], GCJ)
    station_bd = c(*BEIJING_STATION[BD], BD)
    assert distance_m(station_wgs, station_gcj) < 3.0
    assert distance_m(station_gcj, station_bd) < 3.0
    # Taking the GCJ-02 numbers as WGS-84 would put the station ~550 m away.
    assert distance_m(station_wgs, c(*BEIJING_STATION[GCJ])) > 500


def test_haversine_zero_and_antipodes():
    assert haversine_m(c(10.0, 20.0), c(10.0, 20.0)) == 0.0
    half = math.pi * 6371008.8
    assert haversine_m(c(0.0, 0.0), c(0.0, 180.0)) == pytest.approx(half)


@pytest.mark.parametrize("bearing", [0.0, 45.0, 90.0, 180.0, 271.5])
@pytest.mark.parametrize("metres", [0.0, 30.0, 500.0, 12_000.0])
def test_destination_is_that_far_by_the_servers_yardstick(metres, bearing):
    room = c(31.2304, 121.4737)
    there = destination(room, metres, bearing)
    assert there.datum == WGS
    assert haversine_m(room, there) == pytest.approx(metres, abs=1e-3)


def test_destination_goes_the_right_way_and_starts_from_wgs84():
    room = c(31.2304, 121.4737)
    assert destination(room, 1000, 0).lat > room.lat  # north
    east = destination(room, 1000, 90)
    assert east.lon > room.lon and east.lat == pytest.approx(room.lat, abs=1e-4)
    # A GCJ-02 origin is converted first: the result is measured from the true place.
    room_gcj = wgs84_to_gcj02(room)
    assert haversine_m(room, destination(room_gcj, 200, 90)) == pytest.approx(200, abs=0.5)
