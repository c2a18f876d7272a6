"""The lecturer's phone: real JPEG photos of a synthetic classroom with real EXIF.

``make_photo`` writes what a phone camera writes (DESIGN.md §1 step 7): ``DateTimeOriginal`` in
local time with ``OffsetTimeOriginal``, a GPS IFD with WGS-84 degree/minute/second rationals and
N/S/E/W refs, the UTC ``GPSDateStamp``/``GPSTimeStamp``, and ``Make``/``Model``. The scene is
drawn from ``scene_seed``: different seeds give different rooms (perceptual hashes far apart), the
same seed gives the same room, so ``recompress`` and ``resize`` model the ways a reused photo comes
back (WeChat re-encodes and strips EXIF; screenshots and editors rescale).
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction

import numpy as np
from PIL import ExifTags, Image, ImageDraw
from PIL.TiffImagePlugin import IFDRational

# Phones in China run on Beijing time; an EXIF time without an offset means this zone.
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")

# EXIF tag numbers (CIPA DC-008): IFD0, Exif IFD and GPS IFD.
TAG_MAKE, TAG_MODEL = 0x010F, 0x0110
TAG_DATETIME_ORIGINAL, TAG_OFFSET_TIME_ORIGINAL, TAG_SUBSEC_ORIGINAL = 0x9003, 0x9011, 0x9291
TAG_OFFSET_TIME = 0x9010
OFFSET_TAGS = {"OffsetTimeOriginal": TAG_OFFSET_TIME_ORIGINAL, "OffsetTime": TAG_OFFSET_TIME}
GPS_VERSION, GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 0, 1, 2, 3, 4
GPS_TIMESTAMP, GPS_MAP_DATUM, GPS_DATESTAMP = 7, 18, 29


def classroom_scene(seed: int, size: tuple[int, int] = (1280, 960)) -> Image.Image:
    """An RGB picture of a classroom-ish room laid out from ``seed``.

    The big shapes (where the wall meets the floor, the blackboard, the windows, the rows of
    desks) move with the seed, because a perceptual hash sees only the coarse layout; fine
    texture and sensor-like noise make it look like a photo and give feature detectors corners.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)

    def colour(lo: int, hi: int) -> tuple[int, int, int]:
        r, g, b = (int(v) for v in rng.integers(lo, hi, size=3))
        return r, g, b

    horizon = int(h * rng.uniform(0.3, 0.75))
    # A light wall over a dark floor or the other way round: the coarse layout is what a
    # perceptual hash sees, so rooms must differ there, not only in detail.
    light, dark = colour(150, 245), colour(25, 110)
    wall, floor = (light, dark) if rng.uniform() < 0.5 else (dark, light)
    draw.rectangle((0, 0, w, horizon), fill=wall)
    draw.rectangle((0, horizon, w, h), fill=floor)
    # Ceiling lights: bright bars whose count and spacing vary.
    for _ in range(int(rng.integers(2, 5))):
        lx = int(w * rng.uniform(0.05, 0.85))
        ly = int(horizon * rng.uniform(0.02, 0.15))
        draw.rectangle((lx, ly, lx + w // 8, ly + h // 60), fill=(250, 250, 240))
    # Windows on one side, the board somewhere along the front wall.
    left_windows = bool(rng.integers(0, 2))
    for i in range(int(rng.integers(1, 4))):
        wx = int(w * (0.02 + 0.12 * i)) if left_windows else int(w * (0.86 - 0.12 * i))
        wy = int(horizon * rng.uniform(0.15, 0.35))
        ww, wh = w // 10, int(horizon * rng.uniform(0.35, 0.55))
        draw.rectangle((wx, wy, wx + ww, wy + wh), fill=colour(190, 255), outline=(60, 60, 60))
        draw.line(
            (wx + ww // 2, wy, wx + ww // 2, wy + wh), fill=(60, 60, 60), width=max(2, w // 300)
        )
    bw = int(w * rng.uniform(0.28, 0.5))
    bx = int(rng.uniform(0.15, 0.85 - bw / w) * w)
    by = int(horizon * rng.uniform(0.2, 0.35))
    bh = int(horizon * rng.uniform(0.4, 0.55))
    draw.rectangle((bx, by, bx + bw, by + bh), fill=colour(10, 70), outline=(120, 90, 50), width=6)
    for _ in range(int(rng.integers(6, 14))):  # chalk writing
        cx = int(rng.uniform(bx + 10, bx + bw * 0.8))
        cy = int(rng.uniform(by + 10, by + bh - 10))
        draw.line((cx, cy, cx + int(rng.uniform(20, bw * 0.3)), cy), fill=(230, 230, 230), width=3)
    # Rows of desks with students, nearer rows lower and wider.
    rows = int(rng.integers(2, 5))
    desk = colour(90, 170)
    for row in range(rows):
        y = horizon + int((h - horizon) * (0.15 + 0.8 * row / rows))
        count = int(rng.integers(3, 7))
        span = w * (0.5 + 0.45 * row / rows)
        x0 = (w - span) / 2 + rng.uniform(-0.05, 0.05) * w
        for k in range(count):
            dx = int(x0 + span * k / count)
            dw = int(span / count * 0.8)
            dh = int((h - horizon) * 0.08)
            if rng.uniform() < 0.7:
                r = dh // 2 + 4
                draw.ellipse(
                    (dx + dw // 2 - r, y - 3 * r, dx + dw // 2 + r, y - r), fill=colour(30, 200)
                )
            draw.rectangle((dx, y, dx + dw, y + dh), fill=desk, outline=(40, 30, 20))

    # The phone is never held level: a small roll.
    img = img.rotate(
        float(rng.uniform(-6, 6)), resample=Image.Resampling.BILINEAR, expand=False, fillcolor=wall
    )
    # The light field is smooth, so it is computed on a coarse grid and scaled up (cheap).
    gh, gw = max(2, h // 8), max(2, w // 8)
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    yy, xx = yy / gh, xx / gw
    # Vignetting and daylight falling off across the room in a direction of its own.
    vignette = 1.0 - 0.35 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)
    # Patches of daylight and shadow: a random low-frequency field, so that even two rooms
    # laid out alike differ in the coarse light a perceptual hash looks at.
    shade = np.zeros((gh, gw), dtype=np.float32)
    for fx, fy in rng.integers(0, 4, size=(6, 2)):
        phase = rng.uniform(0, 2 * np.pi)
        shade += np.cos(2 * np.pi * (fx * xx + fy * yy) + phase)
    gain = (vignette * (1.0 + 0.5 * ramp) * (1.0 + 0.12 * shade)).astype(np.float32)
    gain_full = np.asarray(
        Image.fromarray(gain, "F").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32
    )
    pixels = np.asarray(img, dtype=np.float32) * gain_full[..., None]
    pixels += rng.normal(0.0, 4.0, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _offset_tz(offset: str) -> timezone:
    match = _OFFSET.match(offset)
    if match is None:
        raise ValueError(f"offset must look like +08:00, got {offset!r}")
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    return timezone(-delta if sign == "-" else delta)


def exif_dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    """Unsigned decimal degrees as the (degrees, minutes, seconds) rationals GPS EXIF uses."""
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = Fraction(round((value - degrees - minutes / 60) * 3600 * 10_000), 10_000)
    return IFDRational(degrees, 1), IFDRational(minutes, 1), IFDRational(seconds)


def _exif(
    *,
    taken_at: datetime | None,
    lat: float | None,
    lon: float | None,
    offset: str | None,
    offset_tag: str | None,
    original_time: bool,
    gps_stamp: bool,
    raw_datetime: str | None,
    make: str,
    model: str,
) -> Image.Exif:
    exif = Image.Exif()
    exif[TAG_MAKE] = make
    exif[TAG_MODEL] = model
    if raw_datetime is not None:
        exif.get_ifd(ExifTags.IFD.Exif)[TAG_DATETIME_ORIGINAL] = raw_datetime
        if offset and offset_tag:
            exif.get_ifd(ExifTags.IFD.Exif)[OFFSET_TAGS[offset_tag]] = offset
    elif taken_at is not None and original_time:
        local = taken_at.astimezone(_offset_tz(offset) if offset else SHANGHAI)
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        sub[TAG_DATETIME_ORIGINAL] = local.strftime("%Y:%m:%d %H:%M:%S")
        if offset and offset_tag:
            sub[OFFSET_TAGS[offset_tag]] = offset
        if local.microsecond:
            sub[TAG_SUBSEC_ORIGINAL] = f"{local.microsecond // 1000:03d}"
    if lat is not None and lon is not None:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        gps[GPS_VERSION] = b"\x02\x03\x00\x00"
        gps[GPS_LAT_REF] = "N" if lat >= 0 else "S"
        gps[GPS_LAT] = exif_dms(lat)
        gps[GPS_LON_REF] = "E" if lon >= 0 else "W"
        gps[GPS_LON] = exif_dms(lon)
        gps[GPS_MAP_DATUM] = "WGS-84"
        if taken_at is not None and gps_stamp:
            utc = taken_at.astimezone(UTC)
            seconds = Fraction(utc.second * 1_000_000 + utc.microsecond, 1_000_000)
            gps[GPS_DATESTAMP] = utc.strftime("%Y:%m:%d")
            gps[GPS_TIMESTAMP] = (
                IFDRational(utc.hour, 1),
                IFDRational(utc.minute, 1),
                IFDRational(seconds),
            )
    return exif


def make_photo(
    *,
    taken_at: datetime | None,
    lat: float | None,
    lon: float | None,
    scene_seed: int,
    with_exif: bool = True,
    offset: str | None = "+08:00",
    offset_tag: str | None = "OffsetTimeOriginal",
    size: tuple[int, int] = (1280, 960),
    original_time: bool = True,
    gps_stamp: bool = True,
    raw_datetime: str | None = None,
    make: str = "Xiaomi",
    model: str = "Redmi Note 12",
    quality: int = 90,
) -> bytes:
    """A JPEG of classroom ``scene_seed`` as a phone camera would save it.

    ``taken_at`` (aware) becomes ``DateTimeOriginal`` in the zone of ``offset`` plus
    ``OffsetTimeOriginal``; with ``offset=None`` the local Beijing time is written with no
    offset tag, as many Android phones do; ``offset_tag`` names the tag the offset goes in
    (``"OffsetTimeOriginal"``, ``"OffsetTime"``, or None: the clock is in ``offset`` but the
    file does not say so). ``raw_datetime`` writes that text as ``DateTimeOriginal`` instead
    (a broken camera clock: ``"0001:01:01 00:00:00"``). ``lat``/``lon`` (WGS-84, signed)
    become the GPS IFD, with the UTC GPS date/time stamps unless ``gps_stamp`` is False.
    ``original_time=False`` leaves out ``DateTimeOriginal`` (so only the GPS stamps carry the time).
    ``with_exif=False`` writes no EXIF at all, like a photo sent through WeChat.
    """
    image = classroom_scene(scene_seed, size)
    out = io.BytesIO()
    if with_exif:
        exif = _exif(
            taken_at=taken_at,
            lat=lat,
            lon=lon,
            offset=offset,
            offset_tag=offset_tag,
            original_time=original_time,
            gps_stamp=gps_stamp,
            raw_datetime=raw_datetime,
            make=make,
            model=model,
        )
        image.save(out, "JPEG", quality=quality, exif=exif)
    else:
        image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def make_png(*, scene_seed: int, size: tuple[int, int] = (1280, 960)) -> bytes:
    """A PNG of classroom ``scene_seed`` with no EXIF (a screenshot or an edited export)."""
    out = io.BytesIO()
    classroom_scene(scene_seed, size).save(out, "PNG")
    return out.getvalue()


def recompress(jpeg: bytes, quality: int) -> bytes:
    """``jpeg`` decoded and saved again at ``quality``, EXIF dropped (what chat apps do)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def crop(jpeg: bytes, share: float, quality: int = 90) -> bytes:
    """``jpeg`` with ``share`` of its width and height cut off the top-left, saved again."""
    with Image.open(io.BytesIO(jpeg)) as image:
        w, h = image.size
        out = io.BytesIO()
        box = (round(w * share), round(h * share), w, h)
        image.convert("RGB").crop(box).save(out, "JPEG", quality=quality)
    return out.getvalue()


def resize(jpeg: bytes, factor: float) -> bytes:
    """``jpeg`` scaled by ``factor`` and saved again (EXIF dropped)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        w, h = image.size
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        out = io.BytesIO()
        image.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(out, "JPEG", quality=90)
    return out.getvalue()
