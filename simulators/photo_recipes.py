"""The lecturer's photos of a replay, as JPEG bytes and the app's form fields (pure).

``simulators.behaviours`` decides when and where each photo is taken; this module makes it the
way a phone and the lecturer's app would (``simulators.phone``): a phone camera writes the time
(local, +08:00) and the GPS fix (WGS-84) into EXIF; an app built on a Chinese map SDK sends the
position as form fields in that SDK's datum, and the file carries no GPS; a reused photo is
another session's file, scaled and re-encoded, with its EXIF edited to this session's time and
place (what an EXIF editor does).

Every picture is a synthetic classroom (``phone.classroom_scene``) whose seed comes from the
session and the photo kind, so a replay is repeatable and no two honest photos are one picture
(the server would call the second one reused).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from common.geo import Coordinate, Datum, convert
from simulators.phone import (
    GPS_DATESTAMP,
    GPS_LAT,
    GPS_LAT_REF,
    GPS_LON,
    GPS_LON_REF,
    GPS_MAP_DATUM,
    GPS_TIMESTAMP,
    GPS_VERSION,
    TAG_DATETIME_ORIGINAL,
    TAG_OFFSET_TIME_ORIGINAL,
    TAG_SUBSEC_ORIGINAL,
    exif_dms,
    make_photo,
)

# Phones take 12–50 MP pictures, but lecturers' apps scale them down before uploading (WeChat
# mini programs send about 0.5 MP); 800x600 also keeps planning a 100-camera day to seconds.
PHOTO_SIZE = (800, 600)
# Seeds of the phone's pictures start here, clear of the small numbers cameras' scenes use.
PHOTO_SEED_BASE = 10_000


def photo_seed(session_id: str, kind: str) -> int:
    """The picture the lecturer takes for ``kind`` of ``session_id``: one of its own per photo,
    the same on every run (crc32, not ``hash``, which Python salts per process)."""
    return PHOTO_SEED_BASE + zlib.crc32(f"{session_id}/{kind}".encode()) % 1_000_000


@dataclass(frozen=True, slots=True)
class Shot:
    """What the phone is asked for: when, where the lecturer stands (WGS-84), which picture,
    in which datum the position is reported (wgs84: EXIF GPS; else the app's fields), and the
    phone's UTC offset (its EXIF times are local)."""

    taken_at: datetime
    position: Coordinate
    scene_seed: int
    datum: Datum = Datum.WGS84
    utc_offset: str = "+08:00"


def utc_offset(zone: tzinfo, at: datetime) -> str:
    """``zone``'s offset at ``at`` as EXIF writes it: ``+08:00``."""
    text = at.astimezone(zone).strftime("%z")
    return f"{text[:3]}:{text[3:5]}"


def take_photo(shot: Shot, size: tuple[int, int] = PHOTO_SIZE) -> tuple[bytes, dict[str, str]]:
    """The JPEG and form fields an upload of ``shot`` carries.

    WGS-84: a phone camera's photo, time and GPS in EXIF, no fields. GCJ-02/BD-09: the app's
    own camera, which writes the time but no GPS, and sends the map SDK's position (and the
    shutter time) as fields; the server converts before measuring (DESIGN.md §1.7).
    """
    if shot.datum == Datum.WGS84:
        jpeg = make_photo(
            taken_at=shot.taken_at,
            lat=shot.position.lat,
            lon=shot.position.lon,
            scene_seed=shot.scene_seed,
            offset=shot.utc_offset,
            size=size,
        )
        return jpeg, {}
    reported = convert(shot.position, shot.datum)
    jpeg = make_photo(
        taken_at=shot.taken_at,
        lat=None,
        lon=None,
        scene_seed=shot.scene_seed,
        offset=shot.utc_offset,
        size=size,
    )
    fields = {
        "taken_at": shot.taken_at.isoformat(),
        "lat": f"{reported.lat:.7f}",
        "lon": f"{reported.lon:.7f}",
        "datum": str(shot.datum),
    }
    return jpeg, fields


def _edit_exif(exif: Image.Exif, shot: Shot) -> None:
    """Rewrite ``exif``'s time and GPS fix to ``shot``'s in place, leaving the rest (make,
    model) alone."""
    taken_at, position = shot.taken_at, convert(shot.position, Datum.WGS84)
    sign = -1 if shot.utc_offset.startswith("-") else 1
    hours, minutes = (int(part) for part in shot.utc_offset[1:].split(":"))
    zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[TAG_DATETIME_ORIGINAL] = taken_at.astimezone(zone).strftime("%Y:%m:%d %H:%M:%S")
    sub[TAG_OFFSET_TIME_ORIGINAL] = shot.utc_offset
    sub.pop(TAG_SUBSEC_ORIGINAL, None)
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    utc = taken_at.astimezone(UTC)
    gps.update(
        {
            GPS_VERSION: b"\x02\x03\x00\x00",
            GPS_LAT_REF: "N" if position.lat >= 0 else "S",
            GPS_LAT: exif_dms(position.lat),
            GPS_LON_REF: "E" if position.lon >= 0 else "W",
            GPS_LON: exif_dms(position.lon),
            GPS_MAP_DATUM: "WGS-84",
            GPS_DATESTAMP: utc.strftime("%Y:%m:%d"),
            GPS_TIMESTAMP: (
                IFDRational(utc.hour, 1),
                IFDRational(utc.minute, 1),
                IFDRational(utc.second, 1),
            ),
        }
    )


def reuse_photo(original: bytes, *, scale: float, quality: int, shot: Shot) -> bytes:
    """``original`` (another session's upload) scaled by ``scale``, re-encoded at JPEG
    ``quality``, its EXIF time and GPS edited to ``shot``'s (GPS whatever ``shot.datum``:
    an EXIF editor writes GPS): the same picture to a perceptual hash, other bytes to
    SHA-256."""
    with Image.open(io.BytesIO(original)) as image:
        exif = image.getexif()
        width, height = image.size
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        picture = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    _edit_exif(exif, shot)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality, exif=exif)
    return out.getvalue()
