"""Coordinates with their datum, conversions between China's map datums, and distances.

GPS and EXIF give WGS-84. Chinese map pickers (AMap, Tencent) and WeChat's ``gcj02`` mode give
GCJ-02, an obfuscated datum offset from WGS-84 by 100–700 m inside China; Baidu adds a second
offset on top of it (BD-09). Those offsets exceed the 100 m geofence, so every coordinate carries
its datum and distances are measured only after converting both points to WGS-84 (DESIGN.md §1.7).

WGS→GCJ is the published (leaked) forward transform on the Krasovsky 1940 ellipsoid; it has no
closed-form inverse, so GCJ→WGS iterates the forward transform to a fixed point (better than
1 mm). GCJ→BD is the published closed form, BD→GCJ its published approximate inverse (~1 m).
As in the published algorithm, points outside a rectangle around China are not obfuscated: there
all three datums coincide. The rectangle is coarse (it includes e.g. Seoul), which is what every
map provider's implementation does too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

# Krasovsky 1940 ellipsoid, as the published GCJ-02 transform uses it.
_KRASOVSKY_A = 6378245.0
_KRASOVSKY_EE = 0.00669342162296594323
# Baidu's angular constant (π·3000/180) of the BD-09 transform.
_X_PI = math.pi * 3000.0 / 180.0
# Mean Earth radius (IUGG R1), the best single radius for haversine.
EARTH_MEAN_RADIUS_M = 6371008.8
# The GCJ inverse stops when the forward transform lands within this of the target (~1 mm).
_INVERSE_EPS_DEG = 1e-8
_INVERSE_MAX_STEPS = 30


class Datum(StrEnum):
    """The geodetic datum a coordinate was given in."""

    WGS84 = "wgs84"
    GCJ02 = "gcj02"
    BD09 = "bd09"


@dataclass(frozen=True, slots=True)
class Coordinate:
    """A latitude/longitude in degrees, with the datum it is expressed in."""

    lat: float
    lon: float
    datum: Datum = Datum.WGS84

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lat) and -90.0 <= self.lat <= 90.0):
            raise ValueError(f"latitude out of range: {self.lat}")
        if not (math.isfinite(self.lon) and -180.0 <= self.lon <= 180.0):
            raise ValueError(f"longitude out of range: {self.lon}")
        # Accept the plain string too ("gcj02"), as a DB row or JSON would give it.
        object.__setattr__(self, "datum", Datum(self.datum))


def out_of_china(lat: float, lon: float) -> bool:
    """Whether the published GCJ-02 algorithm leaves this point unobfuscated.

    The bounding box of the original transform (as in eviltransform and its many ports).
    """
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _gcj_offset(lat: float, lon: float) -> tuple[float, float]:
    """The GCJ-02 offset (dlat, dlon) in degrees at a WGS-84 point inside China."""
    x, y = lon - 105.0, lat - 35.0
    common = (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    dlat += common
    dlat += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    dlat += (160.0 * math.sin(y / 12.0 * math.pi) + 320.0 * math.sin(y * math.pi / 30.0)) * 2 / 3
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    dlon += common
    dlon += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    dlon += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2 / 3
    rad_lat = lat / 180.0 * math.pi
    magic = 1.0 - _KRASOVSKY_EE * math.sin(rad_lat) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_KRASOVSKY_A * (1 - _KRASOVSKY_EE)) / (magic * sqrt_magic) * math.pi)
    dlon = (dlon * 180.0) / (_KRASOVSKY_A / sqrt_magic * math.cos(rad_lat) * math.pi)
    return dlat, dlon


def _require(coord: Coordinate, datum: Datum) -> None:
    if coord.datum != datum:
        raise ValueError(f"expected a {datum} coordinate, got {coord.datum}")


def wgs84_to_gcj02(coord: Coordinate) -> Coordinate:
    """A WGS-84 coordinate in GCJ-02 (unchanged outside China)."""
    _require(coord, Datum.WGS84)
    if out_of_china(coord.lat, coord.lon):
        return Coordinate(coord.lat, coord.lon, Datum.GCJ02)
    dlat, dlon = _gcj_offset(coord.lat, coord.lon)
    return Coordinate(coord.lat + dlat, coord.lon + dlon, Datum.GCJ02)


def gcj02_to_wgs84(coord: Coordinate) -> Coordinate:
    """A GCJ-02 coordinate in WGS-84, by fixed-point iteration of the forward transform.

    The offset varies slowly (its derivative is ~1e-3), so each step shrinks the error about a
    thousandfold: three or four steps reach the 1e-8° stopping rule.
    """
    _require(coord, Datum.GCJ02)
    if out_of_china(coord.lat, coord.lon):
        return Coordinate(coord.lat, coord.lon, Datum.WGS84)
    lat, lon = coord.lat, coord.lon
    for _ in range(_INVERSE_MAX_STEPS):
        if out_of_china(lat, lon):
            break  # only at the rectangle's edge, where the transform itself is discontinuous
        dlat, dlon = _gcj_offset(lat, lon)
        err_lat, err_lon = lat + dlat - coord.lat, lon + dlon - coord.lon
        if abs(err_lat) < _INVERSE_EPS_DEG and abs(err_lon) < _INVERSE_EPS_DEG:
            break
        lat, lon = lat - err_lat, lon - err_lon
    return Coordinate(lat, lon, Datum.WGS84)


def gcj02_to_bd09(coord: Coordinate) -> Coordinate:
    """A GCJ-02 coordinate in BD-09 (unchanged outside China)."""
    _require(coord, Datum.GCJ02)
    if out_of_china(coord.lat, coord.lon):
        return Coordinate(coord.lat, coord.lon, Datum.BD09)
    x, y = coord.lon, coord.lat
    z = math.hypot(x, y) + 0.00002 * math.sin(y * _X_PI)
    theta = math.atan2(y, x) + 0.000003 * math.cos(x * _X_PI)
    return Coordinate(z * math.sin(theta) + 0.006, z * math.cos(theta) + 0.0065, Datum.BD09)


def bd09_to_gcj02(coord: Coordinate) -> Coordinate:
    """A BD-09 coordinate in GCJ-02 (Baidu's published inverse, ~1 m; unchanged outside China)."""
    _require(coord, Datum.BD09)
    if out_of_china(coord.lat, coord.lon):
        return Coordinate(coord.lat, coord.lon, Datum.GCJ02)
    x, y = coord.lon - 0.0065, coord.lat - 0.006
    z = math.hypot(x, y) - 0.00002 * math.sin(y * _X_PI)
    theta = math.atan2(y, x) - 0.000003 * math.cos(x * _X_PI)
    return Coordinate(z * math.sin(theta), z * math.cos(theta), Datum.GCJ02)


def to_wgs84(coord: Coordinate) -> Coordinate:
    """``coord`` in WGS-84, whatever datum it was given in."""
    if coord.datum == Datum.WGS84:
        return coord
    if coord.datum == Datum.GCJ02:
        return gcj02_to_wgs84(coord)
    return gcj02_to_wgs84(bd09_to_gcj02(coord))


def convert(coord: Coordinate, datum: Datum) -> Coordinate:
    """``coord`` in ``datum`` (for showing a WGS-84 point on a Chinese map)."""
    wgs = to_wgs84(coord)
    if datum == Datum.WGS84:
        return wgs
    gcj = wgs84_to_gcj02(wgs)
    return gcj if datum == Datum.GCJ02 else gcj02_to_bd09(gcj)


def haversine_m(a: Coordinate, b: Coordinate) -> float:
    """Great-circle distance in metres, after converting both points to WGS-84.

    On the mean-radius sphere; against the WGS-84 ellipsoid this is within 0.5 % everywhere,
    i.e. under half a metre at the 100 m geofence.
    """
    a, b = to_wgs84(a), to_wgs84(b)
    phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
    dphi, dlam = phi2 - phi1, math.radians(b.lon - a.lon)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * EARTH_MEAN_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def distance_m(a: Coordinate, b: Coordinate) -> float:
    """The distance classcam uses everywhere (geofences, matching): ``haversine_m``."""
    return haversine_m(a, b)


def destination(origin: Coordinate, distance_m: float, bearing_deg: float) -> Coordinate:
    """The WGS-84 point ``distance_m`` from ``origin`` towards ``bearing_deg`` (0 north, 90 east).

    The direct problem on the same mean-radius sphere as ``haversine_m``, so the distance
    measured back is ``distance_m`` to a millimetre: a simulated phone "500 m east of the
    classroom" is 500 m away by the server's own yardstick. ``origin`` may be in any datum.
    """
    start = to_wgs84(origin)
    delta = distance_m / EARTH_MEAN_RADIUS_M
    theta = math.radians(bearing_deg)
    phi1, lam1 = math.radians(start.lat), math.radians(start.lon)
    sin_phi2 = math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    phi2 = math.asin(max(-1.0, min(1.0, sin_phi2)))
    lam2 = lam1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * sin_phi2,
    )
    lon = (math.degrees(lam2) + 540.0) % 360.0 - 180.0
    return Coordinate(math.degrees(phi2), lon, Datum.WGS84)
