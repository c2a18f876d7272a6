"""Lecturers' photos: EXIF time and GPS read exactly, app fallbacks recorded, refusals typed,
re-used photos found by perceptual hash. Every photo is a real JPEG/PNG from the phone
simulator, with EXIF written by Pillow."""

from __future__ import annotations

import hashlib
import io
import itertools
import struct
import zlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from PIL import Image

from ingest_server.photos import (
    PhotoFacts,
    PhotoRejected,
    PhotoRejectReason,
    read_photo,
)
from ingest_server.rules.photo_match import REUSE_MAX_BITS, PictureDistance, picture_distance
from simulators.phone import crop, make_photo, make_png, recompress, resize

TAKEN = datetime(2025, 3, 3, 1, 2, 3, 456000, tzinfo=UTC)  # 09:02:03.456 in Shanghai
SHANGHAI_SCHOOL = (31.230416, 121.473701)
SIZE = (640, 480)  # smaller than a phone's, to keep the tests fast


def read(data: bytes, **app: Any) -> PhotoFacts:
    fields: dict[str, Any] = {
        "app_taken_at": None,
        "app_lat": None,
        "app_lon": None,
        "app_datum": None,
    }
    fields.update(app)
    return read_photo(data, **fields)


def photo(**kwargs: Any) -> bytes:
    kwargs.setdefault("size", SIZE)
    kwargs.setdefault("scene_seed", 1)
    return make_photo(**kwargs)


def rejected(data: bytes, **app: Any) -> PhotoRejected:
    with pytest.raises(PhotoRejected) as info:
        read(data, **app)
    return info.value


def test_exif_time_and_gps_are_read_exactly_in_china() -> None:
    data = photo(taken_at=TAKEN, lat=SHANGHAI_SCHOOL[0], lon=SHANGHAI_SCHOOL[1], offset="+08:00")
    facts = read(data, app_taken_at=TAKEN + timedelta(hours=5), app_lat=1.0, app_lon=2.0)
    assert facts.taken_at == TAKEN and facts.taken_at.tzinfo == UTC
    assert facts.time_source == "exif"
    assert facts.lat == pytest.approx(SHANGHAI_SCHOOL[0], abs=1e-7)
    assert facts.lon == pytest.approx(SHANGHAI_SCHOOL[1], abs=1e-7)
    assert (facts.datum, facts.place_source) == ("wgs84", "exif")
    assert (facts.camera_make, facts.camera_model) == ("Xiaomi", "Redmi Note 12")
    assert (facts.format, facts.width, facts.height) == ("JPEG", 640, 480)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()
    assert facts.phash.startswith("p2:") and picture_distance(facts.phash, facts.phash) == (
        PictureDistance(0, REUSE_MAX_BITS)
    )


def test_southern_and_western_hemispheres_are_negative_and_offsets_honoured() -> None:
    santiago = (-33.448891, -70.669266)
    data = photo(taken_at=TAKEN, lat=santiago[0], lon=santiago[1], offset="-04:00")
    facts = read(data)
    assert facts.lat == pytest.approx(santiago[0], abs=1e-7)
    assert facts.lon == pytest.approx(santiago[1], abs=1e-7)
    assert facts.taken_at == TAKEN


def test_exif_time_without_offset_is_beijing_time_unless_told_otherwise() -> None:
    data = photo(taken_at=TAKEN, lat=30.0, lon=120.0, offset=None, gps_stamp=False)
    assert read(data).taken_at == TAKEN  # the phone wrote 09:02:03.456 local
    assert read(data).time_source == "exif_tz"
    elsewhere = read_photo(
        data,
        app_taken_at=None,
        app_lat=None,
        app_lon=None,
        app_datum=None,
        local_tz=timezone(timedelta(hours=0)),
    )
    assert elsewhere.taken_at == TAKEN + timedelta(hours=8)


def test_gps_date_and_time_stamps_serve_when_datetime_original_is_missing() -> None:
    data = photo(taken_at=TAKEN, lat=30.0, lon=120.0, original_time=False)
    facts = read(data, app_taken_at=TAKEN + timedelta(hours=1))
    assert facts.taken_at == TAKEN
    assert facts.time_source == "gps"


def test_app_fields_fill_in_for_a_photo_without_exif_and_the_source_is_recorded() -> None:
    data = photo(taken_at=TAKEN, lat=30.0, lon=120.0, with_exif=False)
    naive_utc = TAKEN.replace(tzinfo=None) + timedelta(minutes=1)
    facts = read(data, app_taken_at=naive_utc, app_lat=31.2, app_lon=121.5, app_datum="GCJ02")
    assert facts.taken_at == TAKEN + timedelta(minutes=1)  # naive is taken as UTC
    assert (facts.time_source, facts.place_source) == ("app", "app")
    assert (facts.lat, facts.lon, facts.datum) == (31.2, 121.5, "gcj02")
    assert facts.camera_make is None


def test_exif_time_with_app_place_mixes_sources() -> None:
    data = photo(taken_at=TAKEN, lat=None, lon=None)
    facts = read(data, app_lat=39.9, app_lon=116.4, app_datum="bd09")
    assert (facts.time_source, facts.place_source, facts.datum) == ("exif", "app", "bd09")


def test_exif_gps_of_zero_zero_is_no_fix_and_the_app_location_is_used() -> None:
    data = photo(taken_at=TAKEN, lat=0.0, lon=0.0)
    facts = read(data, app_lat=31.2, app_lon=121.5, app_datum="wgs84")
    assert (facts.lat, facts.lon, facts.place_source) == (31.2, 121.5, "app")
    assert rejected(data).reason is PhotoRejectReason.NO_PLACE


def test_png_without_exif_is_accepted_with_app_fields() -> None:
    facts = read(
        make_png(scene_seed=4, size=SIZE),
        app_taken_at=TAKEN,
        app_lat=22.54,
        app_lon=114.06,
        app_datum="gcj02",
    )
    assert facts.format == "PNG"
    assert (facts.time_source, facts.place_source, facts.datum) == ("app", "app", "gcj02")


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` pixels, with one tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(out, "GIF")
    return out.getvalue()


NOT_PHOTOS = {
    "garbage": b"this is not a picture at all",
    "empty": b"",
    "a format we do not open": gif(),
    "past Pillow's own bomb limit": bomb_png(30_000, 30_000),
    "past our pixel limit": bomb_png(9_500, 9_400),
    # 64 MP: a JPEG of that size decodes at 1/8 scale, a PNG is decoded whole.
    "a PNG over the whole-decode budget": bomb_png(8_000, 8_000),
}


@pytest.mark.parametrize("why", sorted(NOT_PHOTOS))
def test_things_that_are_not_photos_are_refused(why: str) -> None:
    error = rejected(
        NOT_PHOTOS[why], app_taken_at=TAKEN, app_lat=31.2, app_lon=121.5, app_datum="wgs84"
    )
    assert error.reason is PhotoRejectReason.NOT_AN_IMAGE, why


def test_a_truncated_jpeg_is_not_an_image() -> None:
    data = photo(taken_at=TAKEN, lat=30.0, lon=120.0)
    error = rejected(data[: len(data) // 2])
    assert error.reason is PhotoRejectReason.NOT_AN_IMAGE
    assert "decode" in error.detail


def test_too_large_is_refused_before_decoding() -> None:
    data = photo(taken_at=TAKEN, lat=30.0, lon=120.0)
    with pytest.raises(PhotoRejected) as info:
        read_photo(
            data,
            app_taken_at=None,
            app_lat=None,
            app_lon=None,
            app_datum=None,
            max_bytes=len(data) - 1,
        )
    assert info.value.reason is PhotoRejectReason.TOO_LARGE
    assert read_photo(
        data, app_taken_at=None, app_lat=None, app_lon=None, app_datum=None, max_bytes=len(data)
    )


def test_no_time_and_no_place() -> None:
    bare = photo(taken_at=None, lat=None, lon=None, with_exif=False)
    assert rejected(bare, app_lat=31.2, app_lon=121.5, app_datum="wgs84").reason == "no_time"
    assert rejected(bare, app_taken_at=TAKEN).reason is PhotoRejectReason.NO_PLACE


@pytest.mark.parametrize(
    ("lat", "lon", "datum", "reason"),
    [
        (91.0, 121.5, "wgs84", PhotoRejectReason.BAD_COORDINATES),
        (31.2, -180.5, "wgs84", PhotoRejectReason.BAD_COORDINATES),
        (0.0, 0.0, "gcj02", PhotoRejectReason.BAD_COORDINATES),
        (float("nan"), 121.5, "gcj02", PhotoRejectReason.BAD_COORDINATES),
        (31.2, None, "gcj02", PhotoRejectReason.BAD_COORDINATES),
        (31.2, 121.5, None, PhotoRejectReason.BAD_DATUM),
        (31.2, 121.5, "gcj-02", PhotoRejectReason.BAD_DATUM),
        (31.2, 121.5, "wgs-84", PhotoRejectReason.BAD_DATUM),
    ],
)
def test_bad_app_locations_are_refused(
    lat: float, lon: float | None, datum: str | None, reason: PhotoRejectReason
) -> None:
    bare = photo(taken_at=None, lat=None, lon=None, with_exif=False)
    error = rejected(bare, app_taken_at=TAKEN, app_lat=lat, app_lon=lon, app_datum=datum)
    assert error.reason is reason


def test_exif_gps_out_of_range_is_refused() -> None:
    data = photo(taken_at=TAKEN, lat=95.0, lon=121.5)
    assert rejected(data).reason is PhotoRejectReason.BAD_COORDINATES


def test_app_datum_is_not_checked_when_exif_gps_is_used() -> None:
    data = photo(taken_at=TAKEN, lat=30.0, lon=120.0)
    assert read(data, app_lat=30.0, app_lon=120.0, app_datum="nonsense").datum == "wgs84"


def bits(a: bytes, b: bytes) -> int:
    app = {"app_taken_at": TAKEN, "app_lat": 30.0, "app_lon": 120.0, "app_datum": "wgs84"}
    distance = picture_distance(read(a, **app).phash, read(b, **app).phash)
    assert distance is not None
    return distance.bits


def test_recompressed_resized_and_cropped_copies_are_the_same_picture() -> None:
    original = make_photo(taken_at=TAKEN, lat=30.0, lon=120.0, scene_seed=7)
    copies = {
        "wechat q40": recompress(original, 40),
        "q20": recompress(original, 20),
        "half size": resize(original, 0.5),
        "quarter size": resize(original, 0.25),
        "shrunk then blown up": resize(resize(original, 0.3), 2.0),
        # The old 64-bit whole-frame pHash moved by 10+ bits here, past its 2-bit limit.
        "cropped 5 % at q60": crop(original, 0.05, quality=60),
        "cropped 3 %": crop(original, 0.03),
    }
    for name, copy in copies.items():
        assert hashlib.sha256(copy).digest() != hashlib.sha256(original).digest()
        assert bits(original, copy) <= REUSE_MAX_BITS // 2, name  # half the limit to spare


def test_photos_of_different_rooms_are_not_the_same_picture() -> None:
    shots = [photo(taken_at=TAKEN, lat=30.0, lon=120.0, scene_seed=seed) for seed in range(8)]
    distances = [bits(a, b) for a, b in itertools.combinations(shots, 2)]
    assert min(distances) > REUSE_MAX_BITS, sorted(distances)[:5]


def test_picture_distance_reads_legacy_hashes_and_refuses_nothing() -> None:
    current = read(photo(taken_at=TAKEN, lat=30.0, lon=120.0)).phash
    legacy = current.split(":")[1]  # what rows stored before signatures hold
    assert picture_distance(legacy, current) == PictureDistance(0, 2)
    assert picture_distance("0000000000000000", "000000000000000f") == PictureDistance(4, 2)
    assert picture_distance("garbage", current) is None
    assert picture_distance("p2:zz", current) is None


# ---------------------------------------------------------------- time: offsets and zones


def test_offset_time_serves_when_offset_time_original_is_missing() -> None:
    data = photo(taken_at=TAKEN, lat=30.0, lon=120.0, offset="-04:00", offset_tag="OffsetTime")
    facts = read(data)
    assert (facts.taken_at, facts.time_source) == (TAKEN, "exif")


def test_the_gps_utc_stamp_gives_the_offset_exif_does_not_state() -> None:
    # A phone on London time writes 01:02 local and no offset; read as Beijing time it was
    # 8 h off. The GPS stamp in the same file says 01:02 UTC.
    data = photo(taken_at=TAKEN, lat=51.5, lon=-0.12, offset="+00:00", offset_tag=None)
    facts = read(data)
    assert (facts.taken_at, facts.time_source) == (TAKEN, "gps")
    # A GPS fix a few minutes old does not move the time: the offset is a whole quarter hour.
    assert facts.taken_at.microsecond == TAKEN.microsecond


def test_without_offset_or_gps_the_configured_zone_is_used() -> None:
    data = photo(
        taken_at=TAKEN, lat=30.0, lon=120.0, offset="+05:00", offset_tag=None, gps_stamp=False
    )
    facts = read_photo(
        data,
        app_taken_at=None,
        app_lat=None,
        app_lon=None,
        app_datum=None,
        local_tz=timezone(timedelta(hours=5)),
    )
    assert (facts.taken_at, facts.time_source) == (TAKEN, "exif_tz")


@pytest.mark.parametrize(
    ("raw", "offset"),
    [
        ("0001:01:01 00:00:00", "+08:00"),
        ("9999:12:31 23:59:59", "-05:00"),
        ("1970:01:01 00:00:00", "+08:00"),
        ("2025:13:45 10:00:00", "+08:00"),
        ("2025:02:30 10:00:00", None),
    ],
)
def test_impossible_exif_dates_are_refused_not_crashes(raw: str, offset: str | None) -> None:
    data = photo(taken_at=TAKEN, lat=30.0, lon=120.0, raw_datetime=raw, offset=offset)
    assert rejected(data).reason is PhotoRejectReason.BAD_TIME


def test_an_unset_camera_clock_is_absent_and_the_app_time_serves() -> None:
    data = photo(
        taken_at=TAKEN, lat=30.0, lon=120.0, raw_datetime="0000:00:00 00:00:00", gps_stamp=False
    )
    facts = read(data, app_taken_at=TAKEN)
    assert (facts.taken_at, facts.time_source) == (TAKEN, "app")


@pytest.mark.parametrize(
    "app_time",
    [
        datetime(1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=8))),
        datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5))),
        datetime(1999, 12, 31, tzinfo=UTC),
        TAKEN + timedelta(days=3),  # after the upload
    ],
)
def test_impossible_app_times_are_refused_not_crashes(app_time: datetime) -> None:
    bare = photo(taken_at=None, lat=30.0, lon=120.0)
    with pytest.raises(PhotoRejected) as info:
        read_photo(
            bare, app_taken_at=app_time, app_lat=None, app_lon=None, app_datum=None, now=TAKEN
        )
    assert info.value.reason is PhotoRejectReason.BAD_TIME
