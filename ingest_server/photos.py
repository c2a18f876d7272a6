"""A lecturer's uploaded photo turned into facts the matcher can trust (DESIGN.md §1 step 7).

Time and place come from the photo's EXIF when it has them, else from what the app sent; the
source of each is recorded so a verdict can say which it relied on.

* **Time.** ``DateTimeOriginal`` (Exif IFD) with ``SubSecTimeOriginal``, read at the first
  offset the file gives: ``OffsetTimeOriginal``, else ``OffsetTime``, else the one the GPS
  IFD's UTC stamp (``GPSDateStamp`` + ``GPSTimeStamp``) implies (rounded to a quarter hour, so
  a GPS fix a few minutes old does not move the time), else the deployment's configured zone
  (``local_tz``: phones write the wall-clock time they show). Without ``DateTimeOriginal``, the
  GPS stamp alone. Then the app's time. ``time_source`` says which: ``exif`` (an offset in the
  file), ``gps`` (the GPS stamp), ``exif_tz`` (the configured zone assumed), ``app``.
* **Impossible times are refused** (``bad_time``, HTTP 422): a date that does not exist, one
  before 2000 or after the upload (``now``), or one whose conversion to UTC overflows (year 1
  or 9999 with an offset). A blank or all-zero EXIF date is a camera whose clock was never set:
  absent, not impossible.
* **Place.** The GPS IFD's latitude/longitude rationals with their N/S/E/W refs, always WGS-84
  (GNSS receivers report WGS-84). Otherwise the app's coordinates *with the datum the app
  states*: WeChat's ``gcj02`` mode and Chinese map pickers (AMap, Tencent) give GCJ-02, Baidu
  gives BD-09. An app coordinate without a known datum is refused (``bad_datum``): the datums
  differ by more than the 100 m geofence.
* EXIF GPS that reads exactly 0,0 or has 0/0 rationals is a phone without a fix, not a place in
  the Gulf of Guinea: it is treated as absent. EXIF coordinates out of range are refused.
* Only JPEG, PNG and HEIC (when a HEIF plugin such as pillow-heif is registered) are opened:
  every other Pillow decoder is attack surface we do not need.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from enum import StrEnum
from typing import Any

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from common.clock import to_utc
from ingest_server.errors import IngestError
from ingest_server.photo_hash import picture_signature

# China has had no daylight saving since 1991, so a fixed offset is exact and needs no tzdata.
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
DATUMS = frozenset({"wgs84", "gcj02", "bd09"})  # common.geo.Datum values
DEFAULT_MAX_BYTES = 15 * 1024 * 1024
# Above this many pixels an upload is treated as a decompression bomb. Just under Pillow's
# warning threshold (MAX_IMAGE_PIXELS, ~89.5 MP), so what we accept never trips it; phones bin
# their 50–200 MP sensors to 12–50 MP photos unless a "full resolution" mode is chosen.
DEFAULT_MAX_PIXELS = 89_000_000
# Formats decoded whole (PNG, HEIC) at most this many pixels: a 24 MP phone photo, ~72 MB as
# RGB; and at most two decodes at once, so a burst of uploads cannot exhaust memory.
MAX_FULL_DECODE_PIXELS = 24_000_000
_DECODES = threading.BoundedSemaphore(2)
# Pillow format name → the name we record.
_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "HEIF": "HEIC"}
# JPEGs are decoded at a reduced DCT scale for hashing: the hash looks at 32x32 pixels anyway.
_HASH_DRAFT_SIZE = (512, 512)

TAG_MAKE, TAG_MODEL = 0x010F, 0x0110
TAG_DATETIME_ORIGINAL, TAG_OFFSET_TIME_ORIGINAL, TAG_SUBSEC_ORIGINAL = 0x9003, 0x9011, 0x9291
TAG_OFFSET_TIME = 0x9010
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON, GPS_TIMESTAMP, GPS_DATESTAMP = 1, 2, 3, 4, 7, 29

_OFFSET = re.compile(r"^\s*([+-])(\d{2}):?(\d{2})\s*$")
# Digital photos before this are not photos of a class we judge; a camera with an unset clock.
EARLIEST_PHOTO = datetime(2000, 1, 1, tzinfo=UTC)
# A phone's clock may run a little ahead of ours.
FUTURE_SLACK = timedelta(days=1)
_QUARTER_HOUR = 15 * 60


class PhotoRejectReason(StrEnum):
    """Why an uploaded photo was refused; the web layer maps each to a 4xx."""

    NOT_AN_IMAGE = "not_an_image"
    TOO_LARGE = "too_large"
    NO_TIME = "no_time"
    NO_PLACE = "no_place"
    BAD_COORDINATES = "bad_coordinates"
    BAD_DATUM = "bad_datum"
    BAD_TIME = "bad_time"


class PhotoRejected(IngestError):
    """An uploaded photo the server will not record, with the reason the lecturer is told."""

    def __init__(self, reason: PhotoRejectReason | str, detail: str) -> None:
        reason = PhotoRejectReason(reason)
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PhotoFacts:
    """What a photo says about when and where it was taken, and how we know."""

    sha256: str
    phash: str  # picture signature (ingest_server.photo_hash)
    width: int  # pixels as stored in the file (before any EXIF orientation)
    height: int
    format: str  # "JPEG" | "PNG" | "HEIC"
    taken_at: datetime  # aware UTC
    time_source: str  # "exif" | "gps" | "exif_tz" | "app"
    lat: float
    lon: float
    datum: str  # "wgs84" | "gcj02" | "bd09"
    place_source: str  # "exif" | "app"
    camera_make: str | None = None
    camera_model: str | None = None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    Image.init()  # registers every plugin, including a HEIF one if installed
    formats = [name for name in _FORMATS if name in Image.OPEN]
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:
        raise PhotoRejected(PhotoRejectReason.NOT_AN_IMAGE, f"decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        # Pillow's PNG text-chunk bomb guard raises ValueError, not UnidentifiedImageError.
        raise PhotoRejected(PhotoRejectReason.NOT_AN_IMAGE, f"not a JPEG/PNG/HEIC: {exc}") from exc
    width, height = image.size
    if image.format != "JPEG":
        # Only JPEG can be decoded at a fraction of its size (``draft``): a PNG or HEIC is
        # decoded whole, so it gets a smaller budget (a 274 KiB PNG of 89 MP cost 442 MiB).
        max_pixels = min(max_pixels, MAX_FULL_DECODE_PIXELS)
    if width <= 0 or height <= 0 or width * height > max_pixels:
        image.close()
        raise PhotoRejected(
            PhotoRejectReason.NOT_AN_IMAGE,
            f"{width}x{height} pixels is over the {max_pixels} limit (decompression bomb?)",
        )
    return image


def _perceptual_hash(image: Image.Image) -> str:
    """The signature of the picture as it is shown (EXIF orientation applied), decoding it."""
    if image.format == "JPEG":
        image.draft("RGB", _HASH_DRAFT_SIZE)
    try:
        upright = ImageOps.exif_transpose(image)
        return picture_signature(upright)
    except (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError) as exc:
        # Truncated or corrupt pixel data: the header parsed but the picture does not decode.
        raise PhotoRejected(PhotoRejectReason.NOT_AN_IMAGE, f"cannot decode: {exc}") from exc


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


def _triple(value: Any) -> tuple[float, float, float] | None:
    """An EXIF (a, b, c) rational triple as floats; None if malformed or any part is 0/0.

    A shorter tuple is padded with zeros (some writers give decimal degrees alone).
    """
    if not isinstance(value, tuple | list) or not 1 <= len(value) <= 3:
        return None
    parts = [_number(v) for v in value]
    if None in parts:
        return None
    a, b, c = [p or 0.0 for p in parts] + [0.0] * (3 - len(parts))
    return a, b, c


def _offset(value: str | None) -> tzinfo | None:
    match = _OFFSET.match(value or "")
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if delta > timedelta(hours=14):
        return None
    return timezone(-delta if sign == "-" else delta)


def _bad_time(detail: str) -> PhotoRejected:
    return PhotoRejected(PhotoRejectReason.BAD_TIME, detail)


def _plausible(moment: datetime, source: str, now: datetime | None) -> datetime:
    latest = None if now is None else to_utc(now) + FUTURE_SLACK
    if moment < EARLIEST_PHOTO or (latest is not None and moment > latest):
        raise _bad_time(f"{source} {moment.isoformat()} is not a possible time for this photo")
    return moment


def _exif_local(exif_ifd: dict[int, Any]) -> datetime | None:
    """``DateTimeOriginal`` (+ sub-seconds) as a naive local time; None when blank or zero."""
    text = _text(exif_ifd.get(TAG_DATETIME_ORIGINAL))
    if text is None or not text.strip(": 0"):
        return None  # "0000:00:00 00:00:00", "    :  :     :  :  ": a clock never set
    try:
        naive = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError as exc:
        raise _bad_time(f"EXIF DateTimeOriginal {text!r} is not a date: {exc}") from exc
    subsec = _text(exif_ifd.get(TAG_SUBSEC_ORIGINAL))
    if subsec and subsec.isdigit():
        naive = naive.replace(microsecond=int(subsec[:6].ljust(6, "0")))
    return naive


def _gps_time(gps: dict[int, Any]) -> datetime | None:
    """The GPS IFD's UTC date and time; None when absent, refused when impossible."""
    date_text, hms = _text(gps.get(GPS_DATESTAMP)), _triple(gps.get(GPS_TIMESTAMP))
    if date_text is None or hms is None:
        return None
    hours, minutes, seconds = hms
    try:
        day = datetime.strptime(date_text[:10], "%Y:%m:%d").replace(tzinfo=UTC)
        if not (0 <= hours < 24 and 0 <= minutes < 60 and 0 <= seconds < 61):
            raise ValueError(f"time {hours}:{minutes}:{seconds}")
        return day + timedelta(hours=hours, minutes=minutes, seconds=seconds)
    except (ValueError, OverflowError) as exc:
        raise _bad_time(f"EXIF GPS stamp {date_text!r} {hms} is not a time: {exc}") from exc


def _exif_time(
    exif_ifd: dict[int, Any], gps: dict[int, Any], local_tz: tzinfo, now: datetime | None
) -> tuple[datetime, str] | None:
    """When the photo was taken by its EXIF, and how we know (see the module doc)."""
    local = _exif_local(exif_ifd)
    gps_utc = _gps_time(gps) if local is None or not _has_offset(exif_ifd) else None
    if local is None:
        return None if gps_utc is None else (_plausible(gps_utc, "EXIF GPS time", now), "gps")
    zone = _offset(_text(exif_ifd.get(TAG_OFFSET_TIME_ORIGINAL))) or _offset(
        _text(exif_ifd.get(TAG_OFFSET_TIME))
    )
    source = "exif"
    if zone is None and gps_utc is not None:
        implied = (local.replace(tzinfo=UTC) - gps_utc).total_seconds()
        quarters = round(implied / _QUARTER_HOUR) * _QUARTER_HOUR
        if abs(quarters) <= 14 * 3600:
            zone, source = timezone(timedelta(seconds=quarters)), "gps"
    if zone is None:
        zone, source = local_tz, "exif_tz"
    try:
        moment = local.replace(tzinfo=zone).astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise _bad_time(f"EXIF DateTimeOriginal {local.isoformat()} overflows: {exc}") from exc
    return _plausible(moment, "EXIF DateTimeOriginal", now), source


def _has_offset(exif_ifd: dict[int, Any]) -> bool:
    return any(
        _offset(_text(exif_ifd.get(tag))) is not None
        for tag in (TAG_OFFSET_TIME_ORIGINAL, TAG_OFFSET_TIME)
    )


def _app_time(app_taken_at: datetime, now: datetime | None) -> datetime:
    try:
        moment = to_utc(app_taken_at)
    except (OverflowError, ValueError) as exc:
        raise _bad_time(f"the app's taken_at {app_taken_at!r} overflows: {exc}") from exc
    return _plausible(moment, "the app's taken_at", now)


def _signed_degrees(dms: Any, ref: Any, positive: str, negative: str) -> float | None:
    parts, hemisphere = _triple(dms), (_text(ref) or "").upper()[:1]
    if parts is None or hemisphere not in (positive, negative):
        return None
    degrees, minutes, seconds = parts
    value = degrees + minutes / 60 + seconds / 3600
    return -value if hemisphere == negative else value


def _exif_place(gps: dict[int, Any]) -> tuple[float, float] | None:
    lat = _signed_degrees(gps.get(GPS_LAT), gps.get(GPS_LAT_REF), "N", "S")
    lon = _signed_degrees(gps.get(GPS_LON), gps.get(GPS_LON_REF), "E", "W")
    if lat is None or lon is None or (lat == 0 and lon == 0):
        return None  # no fix: phones write zeros or 0/0 rationals
    _check_range(lat, lon, "EXIF GPS")
    return lat, lon


def _check_range(lat: float, lon: float, source: str) -> None:
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise PhotoRejected(PhotoRejectReason.BAD_COORDINATES, f"{source} is not a number")
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise PhotoRejected(
            PhotoRejectReason.BAD_COORDINATES, f"{source} {lat},{lon} is out of range"
        )
    if lat == 0 and lon == 0:
        raise PhotoRejected(PhotoRejectReason.BAD_COORDINATES, f"{source} is 0,0 (no fix)")


def _app_place(
    lat: float | None, lon: float | None, datum: str | None
) -> tuple[float, float, str] | None:
    if lat is None and lon is None:
        return None
    if lat is None or lon is None:
        raise PhotoRejected(
            PhotoRejectReason.BAD_COORDINATES, "the app sent one coordinate without the other"
        )
    _check_range(lat, lon, "app location")
    normalised = (datum or "").strip().lower()
    if normalised not in DATUMS:
        raise PhotoRejected(
            PhotoRejectReason.BAD_DATUM,
            f"app location datum {datum!r} is not one of {', '.join(sorted(DATUMS))}",
        )
    return lat, lon, normalised


def _read_exif(image: Image.Image) -> tuple[dict[int, Any], dict[int, Any], dict[int, Any]]:
    """(IFD0, Exif IFD, GPS IFD); empty dicts when absent or too damaged to read."""
    try:
        exif = image.getexif()
        return dict(exif), exif.get_ifd(ExifTags.IFD.Exif), exif.get_ifd(ExifTags.IFD.GPSInfo)
    except (OSError, ValueError, TypeError, KeyError, SyntaxError, struct.error):
        # A broken EXIF block does not make the picture false; the app's fields may serve.
        return {}, {}, {}


def read_photo(
    data: bytes,
    *,
    app_taken_at: datetime | None,
    app_lat: float | None,
    app_lon: float | None,
    app_datum: str | None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    local_tz: tzinfo = SHANGHAI,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    now: datetime | None = None,
) -> PhotoFacts:
    """Hash ``data`` and read when and where it was taken, preferring EXIF to the app's fields.

    ``app_taken_at`` should be aware (a naive value is taken as UTC, as ``to_utc`` does);
    ``app_lat``/``app_lon`` are in ``app_datum`` ("wgs84", "gcj02" or "bd09"). The app's
    fields are only checked when they are used. EXIF times without an offset (in the file or
    implied by its GPS stamp) are read in ``local_tz``; a time after ``now`` (plus a day of
    clock slack) is impossible. Raises ``PhotoRejected`` with the reason the web layer reports.
    """
    if len(data) > max_bytes:
        raise PhotoRejected(
            PhotoRejectReason.TOO_LARGE, f"{len(data)} bytes is over the {max_bytes} byte limit"
        )
    if not data:
        raise PhotoRejected(PhotoRejectReason.NOT_AN_IMAGE, "empty upload")
    sha256 = hashlib.sha256(data).hexdigest()
    with _DECODES, _open(data, max_pixels) as image:
        width, height = image.size
        fmt = _FORMATS[str(image.format)]
        ifd0, exif_ifd, gps = _read_exif(image)
        phash = _perceptual_hash(image)

    exif_time = _exif_time(exif_ifd, gps, local_tz, now)
    if exif_time is not None:
        taken_at, time_source = exif_time
    elif app_taken_at is None:
        raise PhotoRejected(
            PhotoRejectReason.NO_TIME, "the photo has no EXIF time and the app sent none"
        )
    else:
        taken_at, time_source = _app_time(app_taken_at, now), "app"

    exif_place = _exif_place(gps)
    if exif_place is not None:
        (lat, lon), datum, place_source = exif_place, "wgs84", "exif"
    else:
        app_place = _app_place(app_lat, app_lon, app_datum)
        if app_place is None:
            raise PhotoRejected(
                PhotoRejectReason.NO_PLACE, "the photo has no EXIF GPS and the app sent no location"
            )
        lat, lon, datum = app_place
        place_source = "app"

    return PhotoFacts(
        sha256=sha256,
        phash=phash,
        width=width,
        height=height,
        format=fmt,
        taken_at=taken_at,
        time_source=time_source,
        lat=lat,
        lon=lon,
        datum=datum,
        place_source=place_source,
        camera_make=_text(ifd0.get(TAG_MAKE)),
        camera_model=_text(ifd0.get(TAG_MODEL)),
    )
