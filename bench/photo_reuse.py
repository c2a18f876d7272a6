"""How well the photo signature finds a reused picture, measured on real photographs.

    .venv/bin/python bench/photo_reuse.py [--quick]

The photographs are the ones scikit-image's wheel ships (``skimage.data``; no download). Each
is saved as a JPEG at quality 95 (the "original" upload), then transformed the ways a stolen
photo comes back: resized to 50–90 %, re-encoded at quality 50–90, cropped by 5 % (centred, from
a corner, one axis only) or lighter, and every resize × quality pair with a 5 % corner crop.

* a **miss** is a transformed copy whose distance to its own original is over the threshold;
* a **false match** is a transformed copy (or an original) within the threshold of a
  *different* original.

It prints, per transformation, the worst distance to the own original and the misses, then the
false matches and the closest distinct pair, and the margin of the chosen threshold to both.
The stereo pair (``motorcycle_left``/``right``: one scene from two viewpoints a few cm apart)
is reported on its own: it is what an honest lecturer photographing the same room from almost
the same spot produces.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest_server.photo_hash import picture_signature
from ingest_server.rules.photo_match import (
    LEGACY_REUSE_MAX_BITS,
    REUSE_MAX_BITS,
    picture_distance,
)

# Photographs (not drawings, charts or synthetic images) in skimage's bundled data.
PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)
STEREO = ("motorcycle_left.png", "motorcycle_right.png")

Transform = Callable[[Image.Image], Image.Image]


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue()))


def scaled(image: Image.Image, factor: float) -> Image.Image:
    size = (round(image.width * factor), round(image.height * factor))
    return image.resize(size, Image.Resampling.LANCZOS)


def cropped(
    image: Image.Image, cut_x: float, cut_y: float, off_x: float, off_y: float
) -> Image.Image:
    """``cut_*`` of the width/height removed, ``off_*`` of it taken from the left/top."""
    w, h = image.size
    return image.crop(
        (
            round(w * off_x),
            round(h * off_y),
            round(w * (1 - cut_x + off_x)),
            round(h * (1 - cut_y + off_y)),
        )
    )


def transforms(quick: bool) -> dict[str, Transform]:
    out: dict[str, Transform] = {}
    factors = (0.5, 0.7, 0.9) if quick else (0.5, 0.6, 0.7, 0.8, 0.9)
    qualities = (50, 70, 90) if quick else (50, 60, 70, 80, 90)
    for f in factors:
        out[f"resize {f:.0%}"] = lambda i, f=f: jpeg(scaled(i, f), 95)
    for q in qualities:
        out[f"quality {q}"] = lambda i, q=q: jpeg(i, q)
    crops = {
        "crop 5% centred": (0.05, 0.05, 0.025, 0.025),
        "crop 5% top-left": (0.05, 0.05, 0.0, 0.0),
        "crop 5% bottom-right": (0.05, 0.05, 0.05, 0.05),
        "crop 5% width only": (0.05, 0.0, 0.05, 0.0),
        "crop 3% off-centre": (0.03, 0.03, 0.01, 0.02),
        "crop 1%": (0.01, 0.01, 0.005, 0.0),
    }
    for name, box in crops.items():
        out[name] = lambda i, box=box: jpeg(cropped(i, *box), 95)
    for f, q in itertools.product(factors, qualities):
        out[f"resize {f:.0%} + q{q} + crop 5%"] = lambda i, f=f, q=q: jpeg(
            cropped(scaled(i, f), 0.05, 0.05, 0.05, 0.05), q
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer resize/quality steps")
    args = parser.parse_args()
    try:
        import skimage.data
    except ImportError:
        print("needs scikit-image (pip install -e .[dev])", file=sys.stderr)
        return 2
    root = Path(skimage.data.__file__).parent
    started = time.monotonic()
    images = {name: Image.open(root / name).convert("RGB") for name in PHOTOS}
    originals = {name: jpeg(image, 95) for name, image in images.items()}
    signatures = {name: picture_signature(image) for name, image in originals.items()}

    def bits(a: str, b: str) -> int:
        distance = picture_distance(a, b)
        assert distance is not None
        return distance.bits

    copies: list[tuple[str, str, str]] = []  # (transformation, photo, signature)
    print(f"{len(PHOTOS)} photographs from skimage.data; threshold {REUSE_MAX_BITS} of 256 bits")
    print(f"{'transformation':34} {'worst':>5} {'misses':>7}")
    worst_same = 0
    total_misses = 0
    for label, transform in transforms(args.quick).items():
        distances = []
        for name, original in originals.items():
            signature = picture_signature(transform(original))
            copies.append((label, name, signature))
            distances.append(bits(signature, signatures[name]))
        misses = sum(d > REUSE_MAX_BITS for d in distances)
        worst_same = max(worst_same, *distances)
        total_misses += misses
        print(f"{label:34} {max(distances):5d} {misses:4d}/{len(distances)}")

    different = [
        bits(signature, signatures[other])
        for _, name, signature in copies
        for other in PHOTOS
        if other != name
    ]
    different += [bits(signatures[a], signatures[b]) for a, b in itertools.combinations(PHOTOS, 2)]
    false_matches = sum(d <= REUSE_MAX_BITS for d in different)
    closest = min(different)
    stereo = [
        picture_signature(jpeg(Image.open(root / name).convert("RGB"), 95)) for name in STEREO
    ]
    print()
    print(
        f"same picture:      {len(copies)} copies, {total_misses} misses, worst {worst_same} bits"
    )
    print(
        f"different pictures: {len(different)} pairs, {false_matches} false matches,"
        f" closest {closest} bits"
    )
    print(
        f"threshold {REUSE_MAX_BITS}: margin {REUSE_MAX_BITS - worst_same} bits to a miss,"
        f" {closest - REUSE_MAX_BITS - 1} bits to a false match"
    )
    print(f"stereo pair (same scene, another viewpoint): {bits(*stereo)} bits")
    # The legacy 64-bit whole-frame pHash on the same copies, for comparison.
    legacy_same = max(
        bits(sig.split(":")[1], signatures[name].split(":")[1]) for _, name, sig in copies
    )
    legacy_diff = min(
        bits(signatures[a].split(":")[1], signatures[b].split(":")[1])
        for a, b in itertools.combinations(PHOTOS, 2)
    )
    print(
        f"legacy 64-bit pHash (limit {LEGACY_REUSE_MAX_BITS}): same picture up to {legacy_same}"
        f" bits, different originals from {legacy_diff} bits"
    )
    print(f"({time.monotonic() - started:.0f} s)")
    return 0 if total_misses == 0 and false_matches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
