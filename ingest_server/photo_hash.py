"""A photo's picture signature: finds the same picture after resizing, re-encoding and a light crop.

A single perceptual hash of the whole frame cannot survive a crop: cutting 5 % off one side
shifts and rescales everything, and a 64-bit pHash of skimage's sample photographs then moves by
up to 22 bits while different photographs come as close as 16 (``bench/photo_reuse.py``). So
the signature pairs two kinds of 256-bit DCT pHash (``imagehash.phash``, 16x16 from 64x64):

* the **anchor**: the central 90 % of the picture. Any copy cropped by at most 5 % per axis
  still holds all of it, somewhere;
* 49 **probes**: where that central region lies in a copy that was cropped by 0, 2.5 or 5 %
  along each axis, taken from the top, the middle or the bottom (7 placements per axis).

Two pictures are the same when one's anchor is near one of the other's probes, either way
round (``ingest_server.rules.photo_match.picture_distance``). The old 64-bit whole-frame pHash
is kept at the front so rows stored before this format stay comparable.

Stored as ``p2:<legacy 16 hex>:<anchor 64 hex>:<49 probes, 64 hex each>`` (3,221 characters).
"""

from __future__ import annotations

import imagehash
from PIL import Image

SIGNATURE_VERSION = "p2"
HASH_SIZE = 16  # 16x16 DCT bits from a 64x64 thumbnail
# The anchor leaves this share of the width/height on each side.
ANCHOR_MARGIN = 0.05
# (share cropped off, share of it taken from the top/left): the crops a probe expects.
CROP_PLACEMENTS: tuple[tuple[float, float], ...] = (
    (0.0, 0.0),
    (0.025, 0.0),
    (0.025, 0.0125),
    (0.025, 0.025),
    (0.05, 0.0),
    (0.05, 0.025),
    (0.05, 0.05),
)
# Hashing looks at 64x64 pixels; a 512-pixel copy keeps the crops exact to a fraction of one.
_WORKING_SIZE = (512, 512)


def _hex(image: Image.Image, box: tuple[float, float, float, float]) -> str:
    width, height = image.size
    x0, y0, x1, y1 = box
    region = image.crop(
        (round(width * x0), round(height * y0), round(width * x1), round(height * y1))
    )
    return str(imagehash.phash(region, hash_size=HASH_SIZE))


def _probe_span(cropped: float, offset: float) -> tuple[float, float]:
    """Where the original's central span lies in a copy with ``cropped`` cut, ``offset`` of it
    from the start: original x maps to (x - offset) / (1 - cropped)."""
    lo, hi = ANCHOR_MARGIN, 1 - ANCHOR_MARGIN
    return (lo - offset) / (1 - cropped), (hi - offset) / (1 - cropped)


def picture_signature(upright: Image.Image) -> str:
    """The signature of ``upright`` (EXIF orientation already applied); see the module doc."""
    legacy = str(imagehash.phash(upright))
    gray = upright.convert("L")
    gray.thumbnail(_WORKING_SIZE)
    m = ANCHOR_MARGIN
    anchor = _hex(gray, (m, m, 1 - m, 1 - m))
    probes = []
    for cut_x, off_x in CROP_PLACEMENTS:
        x0, x1 = _probe_span(cut_x, off_x)
        for cut_y, off_y in CROP_PLACEMENTS:
            y0, y1 = _probe_span(cut_y, off_y)
            probes.append(_hex(gray, (x0, y0, x1, y1)))
    return f"{SIGNATURE_VERSION}:{legacy}:{anchor}:{''.join(probes)}"
