"""Is a picture a classroom's view? ORB features matched to the classroom's reference still.

The moved-camera check of ``video_checks`` and the other-classroom check both ask it. ORB
keypoints of a frame are matched to those of a reference still (Lowe's ratio test, then a
RANSAC homography); the similarity is the share of keypoints that are homography inliers. A
small pan, zoom or lighting change keeps a homography; another room, or a camera turned to the
wall, does not. Measured on the simulator's classroom scenes (``bench/other_view_margin.py``,
median over a clip's samples): a clip scores 0.78-0.91 against its own room's view, 0.62-0.69
when the camera is nudged and the light dimmed, and at most 0.09 against 39 unrelated views.

Features are computed once per picture and width (``View``): a reference still is matched
with every clip of its classroom, and a clip that does not fit its classroom's view (or whose
classroom has none) is matched with the views of the institution's other classrooms, so each
extra view costs a match and a homography, not a feature extraction.

**Another classroom's footage.** A device key in the wrong hands can sign clips cut from
another classroom's live recording of the same minutes: times, signature and device are all
right, only the picture is not the classroom's. ``other_view`` tells which other view such a
clip shows: it screens every other view at the coarse scale, frame by frame, at the moved
threshold (the bar that says a clip *is* its own classroom's view), then scores the best few
survivors over all the frames like the own reference, and accepts the best only when its
median reaches ``accept`` (``SanityThresholds.other_view_similarity``, 0.2: about twice the
best unrelated view, a third of a nudged view of the right room). A camera that merely turned
matches no view and stays a moved camera. Cost on a loaded 2-core machine: ~2-4 ms per extra
view screened, ~50-80 ms per confirmation, at most ``MAX_CONFIRMED`` of those.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

ORB_WIDTHS = (160, 320)  # scales at which a frame is matched to a reference
MIN_MATCHES = 8  # a homography from fewer points is chance, not a match
MAX_CONFIRMED = 3  # other views that passed the screen and are scored in full, best first


def scaled(gray: np.ndarray, width: int) -> np.ndarray:
    """``gray`` shrunk to ``width`` pixels across (never enlarged), aspect kept."""
    h, w = gray.shape
    if w <= width:
        return gray
    return cv2.resize(gray, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True, slots=True)
class _Features:
    points: np.ndarray  # (n, 2) float32 keypoint positions
    descriptors: np.ndarray | None  # (n, 32) uint8, None when ORB found nothing


class View:
    """A grayscale picture (reference still or clip frame) and its ORB features at each
    matching width, computed on first use and kept.

    The top ``banner_fraction`` of the picture is left out: cameras burn a ticking clock into
    it, and the clock is not the room.
    """

    def __init__(self, gray: np.ndarray, banner_fraction: float = 0.12) -> None:
        self.gray = gray
        self.banner_fraction = banner_fraction
        self._features: dict[int, _Features] = {}

    @property
    def width(self) -> int:
        return int(self.gray.shape[1])

    def features(self, width: int) -> _Features:
        """ORB keypoints and descriptors of the picture scaled to ``width``."""
        cached = self._features.get(width)
        if cached is None:
            small = scaled(self.gray, width)
            mask = np.full(small.shape, 255, dtype=np.uint8)
            mask[: round(small.shape[0] * self.banner_fraction)] = 0
            keypoints, descriptors = cv2.ORB.create(nfeatures=1000).detectAndCompute(small, mask)
            points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
            cached = _Features(points, descriptors)
            self._features[width] = cached
        return cached


def _inlier_share(reference: _Features, frame: _Features) -> float:
    """Share of keypoints that are inliers of one homography from ``frame`` to ``reference``
    (both at the same width)."""
    ref_n, cur_n = len(reference.points), len(frame.points)
    if reference.descriptors is None or frame.descriptors is None:
        return 0.0
    if ref_n < MIN_MATCHES or cur_n < MIN_MATCHES:
        return 0.0
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    good = [
        pair[0]
        for pair in matcher.knnMatch(frame.descriptors, reference.descriptors, k=2)
        if len(pair) == 2 and pair[0].distance < 0.75 * pair[1].distance
    ]
    if len(good) < MIN_MATCHES:
        return 0.0
    src = frame.points[[m.queryIdx for m in good]].reshape(-1, 1, 2)
    dst = reference.points[[m.trainIdx for m in good]].reshape(-1, 1, 2)
    _, inlier_mask = cv2.findHomography(src, dst, cv2.RANSAC, 5.0)
    if inlier_mask is None:
        return 0.0
    # Several frame keypoints can match one reference keypoint: cap at 1.
    return min(1.0, int(inlier_mask.sum()) / min(ref_n, cur_n))


def similarity(reference: View, frame: View) -> float:
    """How much of ``frame`` is the view in ``reference``: 0 (another view) to ~1.

    Matched at two scales and the better kept: at 160 px wide only the room's big shapes
    (board, windows, rows of desks) are left, which survives a reference taken at another
    resolution or time of day; at 320 px finer texture helps when the big shapes are occluded.
    """
    best = 0.0
    for target in ORB_WIDTHS:
        width = min(target, reference.width, frame.width)
        best = max(best, _inlier_share(reference.features(width), frame.features(width)))
    return best


def view_similarity(
    reference: np.ndarray, frame: np.ndarray, banner_fraction: float = 0.12
) -> float:
    """``similarity`` of two grayscale arrays (features computed for this one comparison)."""
    return similarity(View(reference, banner_fraction), View(frame, banner_fraction))


def median_similarity(reference: View, frames: Sequence[View]) -> float:
    """The median ``similarity`` of ``frames`` to ``reference``: a person walking in front
    of the camera in one frame does not decide it."""
    return statistics.median(similarity(reference, frame) for frame in frames)


@dataclass(frozen=True, slots=True)
class OtherView:
    """Which other view a clip's frames show, and how well they match it."""

    key: str
    similarity: float  # median over the frames, like the own reference's


def coarse_similarity(reference: View, frame: View) -> float:
    """``similarity`` at the coarsest scale only (the room's big shapes): about a millisecond
    against ~1000 keypoints at 320 px, which cost ~15-20 ms to match."""
    width = min(ORB_WIDTHS[0], reference.width, frame.width)
    return _inlier_share(reference.features(width), frame.features(width))


def other_view(
    frames: Sequence[View], others: Mapping[str, View], *, screen: float, accept: float
) -> OtherView | None:
    """The view among ``others`` that ``frames`` clearly show, if any; ``None``: no view fits.

    Bounded work: every view is screened at the coarsest scale, frame by frame until one
    reaches ``screen``; the ``MAX_CONFIRMED`` best that did are scored like the own reference
    (``median_similarity`` over all frames, both scales), and the best of those at ``accept``
    or more wins.
    """
    if not frames or not others:
        return None
    screened: list[tuple[float, str]] = []
    for key, view in others.items():
        for frame in frames:
            score = coarse_similarity(view, frame)
            if score >= screen:
                screened.append((score, key))
                break
    best: OtherView | None = None
    for _, key in sorted(screened, key=lambda item: (-item[0], item[1]))[:MAX_CONFIRMED]:
        score = median_similarity(others[key], frames)
        if score >= accept and (best is None or score > best.similarity):
            best = OtherView(key, score)
    return best
