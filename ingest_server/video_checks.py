"""Is a stored clip a real view of the classroom? Black, frozen and moved checks on sampled frames.

Feeds the verdict's ``video_black`` and ``video_frozen`` reasons and the moved-camera check
(DESIGN.md §1 steps 7–8). Only about ``sample_fps`` frames per second are analysed, never the
whole clip at full rate, and when the clip's keyframes come at least that often (the agent's
clips have one a second) only keyframes are decoded at all (``skip_frame=NONKEY``).

Everything is measured on luma (the Y plane taken straight from the decoded picture, stretched
to full range) with a top banner strip left out, because our synthetic camera and most IP
cameras burn a ticking timestamp into it: a frozen sensor under a live clock must read frozen.

* **black** — lens covered or camera dark: in most samples the mean luma is low *and* the
  picture is flat (low standard deviation). A dim but real room has structure, so it is not
  black however dark it is.
* **frozen** — compared on **keyframes only**, at full resolution. A keyframe is an independent
  encoding of what the sensor saw, so two keyframes of a live room differ by sensor noise
  (mean absolute difference >= 0.6 even for a dim, still room at CRF 35); a frozen sensor
  gives the encoder the same picture, and its keyframes come out identical (0.00), or, when
  rate control changed the quantiser, identical to one a few keyframes back. P-frames cannot
  tell the two apart: a static scene's P-frames are mostly skip blocks that copy their
  reference, so a quiet room sampled on P-frames measured as still as a frozen feed
  (0.00–0.01 at CRF 28–35). A keyframe counts as frozen when its mean absolute difference to
  one of the previous ``frozen_lookback`` keyframes is below ``frozen_mad``; the clip is
  frozen when most keyframes are.
* **moved** — ORB features of sampled frames matched to the classroom's reference still (ratio
  test, then a RANSAC homography); the similarity is the share of keypoints that are homography
  inliers, median over a few samples. A small pan, zoom or lighting change keeps a homography;
  another room, or a camera turned to the wall, does not.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from ingest_server.errors import IngestError

# Pixel formats / colour range that carry full-range (0–255) luma; others are TV range 16–235.
_FULL_RANGE_PIX_FMTS = ("yuvj420p", "yuvj422p", "yuvj444p")
_COLOR_RANGE_JPEG = 2  # AVCOL_RANGE_JPEG
ANALYSIS_WIDTH = 480  # frames are scaled down to this width for the black and moved checks
_ORB_WIDTHS = (160, 320)  # scales at which a frame is matched to the reference


class SanityError(IngestError):
    """A clip that cannot be decoded (corrupt, truncated, or without a video stream)."""

    def __init__(self, path: Path | str, why: str) -> None:
        super().__init__(f"cannot check {path}: {why}")
        self.path = str(path)
        self.why = why


@dataclass(frozen=True, slots=True)
class SanityThresholds:
    """The numbers behind the verdicts; see the module docstring and the tests' margins."""

    banner_fraction: float = 0.12  # top strip left out (burned-in clock), share of the height
    black_luma: float = 32.0  # a frame is dark below this mean luma (0–255, full range)...
    black_std: float = 6.0  # ...and flat below this standard deviation
    black_share: float = 0.8  # black when at least this share of sampled frames is dark
    frozen_mad: float = 0.3  # a keyframe repeats an earlier one below this mean abs. difference
    frozen_lookback: int = 5  # how many earlier keyframes a keyframe is compared with
    # Frozen when at least this share of keyframes repeat. Not 0.9: rate control re-quantises
    # a frozen picture now and then (measured 0.71–1.00 on frozen clips, 0.00 on live ones).
    frozen_share: float = 0.6
    moved_similarity: float = 0.07  # moved below this share of keypoints that are inliers
    analysis_width: int = ANALYSIS_WIDTH
    reference_samples: int = 5  # frames compared with the reference, evenly spread


@dataclass(frozen=True, slots=True)
class SanityReport:
    """Flags for the verdict plus the measurements they came from."""

    black: bool
    frozen: bool
    moved: bool | None  # None when there was no reference to compare with
    mean_luma: float  # mean over sampled frames, banner excluded, full range
    luma_std: float  # median over sampled frames of the luma standard deviation
    dark_share: float  # share of sampled frames that were dark and flat
    frozen_fraction: float  # share of keyframes (after the first) repeating an earlier one
    median_keyframe_diff: float  # median of each keyframe's smallest difference to earlier ones
    reference_similarity: float | None  # median inlier share against the reference
    frames_sampled: int  # frames analysed for black and moved
    keyframes_compared: int  # keyframes analysed for frozen
    keyframes_only: bool  # whether the black/moved samples could be keyframes alone


@dataclass(frozen=True, slots=True)
class _Sample:
    small: np.ndarray  # luma scaled to the analysis width (uint8), banner included
    mean: float  # of the luma below the banner
    std: float
    diff: float | None  # keyframes: smallest mean abs. difference to the previous few


def _luma(frame: av.VideoFrame) -> np.ndarray:
    """The frame's luma as a full-range uint8 array, without a colour conversion."""
    fmt = frame.format.name
    if fmt.startswith(("yuv", "nv")):
        plane = frame.planes[0]
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(frame.height, plane.line_size)
        y = rows[:, : frame.width]
        full = fmt in _FULL_RANGE_PIX_FMTS or frame.color_range == _COLOR_RANGE_JPEG
        if full:
            return np.ascontiguousarray(y)
        # Limited range: 16 is black, 235 white. Stretch so thresholds mean the same for all.
        stretched = (y.astype(np.float32) - 16.0) * (255.0 / 219.0)
        return np.clip(stretched, 0, 255).astype(np.uint8)
    return np.asarray(frame.to_ndarray(format="gray"), dtype=np.uint8)


def _banner_rows(height: int, thresholds: SanityThresholds) -> int:
    return round(height * thresholds.banner_fraction)


def _scaled(gray: np.ndarray, width: int) -> np.ndarray:
    h, w = gray.shape
    if w <= width:
        return gray
    return cv2.resize(gray, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def _decode_samples(
    path: Path, sample_fps: float, limits: SanityThresholds, *, keyframes_only: bool
) -> tuple[list[_Sample], float]:
    """Frames at most one per ``1 / sample_fps`` and the clip's duration in seconds.

    With ``keyframes_only`` every sample also carries its difference (full resolution, banner
    excluded) to the closest of the previous ``frozen_lookback`` sampled keyframes.
    """
    samples: list[_Sample] = []
    earlier: list[np.ndarray] = []
    period = 1.0 / sample_fps
    # Slack, so a keyframe forced "every second" but landing a frame early is still taken.
    slack = min(0.05, 0.25 * period)
    next_time: float | None = None
    last_time = 0.0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SanityError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if keyframes_only:
                stream.codec_context.skip_frame = "NONKEY"
            time_base = stream.time_base
            for frame in container.decode(stream):
                if frame.pts is None or time_base is None:
                    continue
                t = float(frame.pts * time_base)
                last_time = max(last_time, t)
                if next_time is not None and t < next_time - slack:
                    continue
                next_time = (t if next_time is None else next_time) + period
                while next_time <= t:  # after a gap, sample again from here on
                    next_time += period
                luma = _luma(frame)
                diff = None
                if keyframes_only:
                    body = luma[_banner_rows(luma.shape[0], limits) :]
                    same_shape = [e for e in earlier if e.shape == body.shape]
                    if same_shape:
                        diff = min(float(cv2.absdiff(body, e).mean()) for e in same_shape)
                    earlier = [*earlier, body][-limits.frozen_lookback :]
                small = _scaled(luma, limits.analysis_width)
                small_body = small[_banner_rows(small.shape[0], limits) :]
                samples.append(
                    _Sample(small, float(small_body.mean()), float(small_body.std()), diff)
                )
            duration = float(container.duration / av.time_base) if container.duration else 0.0
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise SanityError(path, str(exc)) from exc
    return samples, max(duration, last_time)


def _sample(
    path: Path, sample_fps: float, limits: SanityThresholds
) -> tuple[list[_Sample], list[_Sample]]:
    """(samples for black and moved, keyframe samples for frozen)."""
    if sample_fps <= 0:
        raise ValueError("sample_fps must be positive")
    keyframes, duration = _decode_samples(path, sample_fps, limits, keyframes_only=True)
    samples = keyframes
    if len(keyframes) * 2 < int(duration * sample_fps):
        # Keyframes too sparse for the sampling rate (an IP camera with a long GOP): decode
        # every frame and sample by time for black and moved.
        samples, _ = _decode_samples(path, sample_fps, limits, keyframes_only=False)
    if not samples:
        raise SanityError(path, "no decodable video frames")
    return samples, keyframes


def _inlier_share(reference: np.ndarray, frame: np.ndarray, banner_fraction: float) -> float:
    """Share of keypoints that are inliers of one homography from ``frame`` to ``reference``
    (both already at the same width)."""
    orb = cv2.ORB.create(nfeatures=1000)

    def features(gray: np.ndarray) -> tuple[list[cv2.KeyPoint], np.ndarray | None]:
        mask = np.full(gray.shape, 255, dtype=np.uint8)
        mask[: round(gray.shape[0] * banner_fraction)] = 0  # the clock is not the room
        keypoints, descriptors = orb.detectAndCompute(gray, mask)
        return list(keypoints), descriptors

    ref_kp, ref_desc = features(reference)
    cur_kp, cur_desc = features(frame)
    if ref_desc is None or cur_desc is None or len(ref_kp) < 8 or len(cur_kp) < 8:
        return 0.0
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    good = [
        pair[0]
        for pair in matcher.knnMatch(cur_desc, ref_desc, k=2)
        if len(pair) == 2 and pair[0].distance < 0.75 * pair[1].distance
    ]
    if len(good) < 8:
        return 0.0  # a homography from fewer points is chance, not a match
    src = np.array([cur_kp[m.queryIdx].pt for m in good], dtype=np.float32).reshape(-1, 1, 2)
    dst = np.array([ref_kp[m.trainIdx].pt for m in good], dtype=np.float32).reshape(-1, 1, 2)
    _, inlier_mask = cv2.findHomography(src, dst, cv2.RANSAC, 5.0)
    if inlier_mask is None:
        return 0.0
    # Several frame keypoints can match one reference keypoint: cap at 1.
    return min(1.0, int(inlier_mask.sum()) / min(len(ref_kp), len(cur_kp)))


def view_similarity(
    reference: np.ndarray, frame: np.ndarray, banner_fraction: float = 0.12
) -> float:
    """How much of ``frame`` (grayscale) is the view in ``reference``: 0 (another view) to ~1.

    Matched at two scales and the better kept: at 160 px wide only the room's big shapes
    (board, windows, rows of desks) are left, which survives a reference taken at another
    resolution or time of day; at 320 px finer texture helps when the big shapes are occluded.
    """
    best = 0.0
    for target in _ORB_WIDTHS:
        width = min(target, reference.shape[1], frame.shape[1])
        share = _inlier_share(_scaled(reference, width), _scaled(frame, width), banner_fraction)
        best = max(best, share)
    return best


def check_clip(
    path: Path | str,
    *,
    reference: np.ndarray | None = None,
    sample_fps: float = 1.0,
    thresholds: SanityThresholds | None = None,
) -> SanityReport:
    """Sample ``path`` at about ``sample_fps`` and judge black, frozen and (given the classroom's
    ``reference`` from ``reference_from_image``/``reference_from_clip``) moved.

    The three flags are independent: a covered lens also reads moved (there is nothing to
    match) and often frozen, so a verdict should report ``video_black`` first. Raises
    ``SanityError`` if the file cannot be decoded.
    """
    limits = thresholds or SanityThresholds()
    samples, keyframes = _sample(Path(path), sample_fps, limits)
    dark = [s.mean < limits.black_luma and s.std < limits.black_std for s in samples]
    dark_share = sum(dark) / len(samples)
    diffs = [s.diff for s in keyframes if s.diff is not None]
    frozen_fraction = sum(d < limits.frozen_mad for d in diffs) / len(diffs) if diffs else 0.0
    similarity: float | None = None
    if reference is not None:
        step = max(1, len(samples) // limits.reference_samples)
        picked = samples[step // 2 :: step][: limits.reference_samples]
        similarity = statistics.median(
            view_similarity(reference, s.small, limits.banner_fraction) for s in picked
        )
    return SanityReport(
        black=dark_share >= limits.black_share,
        # One pair of keyframes proves nothing: frozen needs at least three keyframes.
        frozen=len(diffs) >= 2 and frozen_fraction >= limits.frozen_share,
        moved=None if similarity is None else similarity < limits.moved_similarity,
        mean_luma=float(np.mean([s.mean for s in samples])),
        luma_std=statistics.median(s.std for s in samples),
        dark_share=dark_share,
        frozen_fraction=frozen_fraction,
        median_keyframe_diff=statistics.median(diffs) if diffs else 0.0,
        reference_similarity=similarity,
        frames_sampled=len(samples),
        keyframes_compared=len(keyframes),
        keyframes_only=samples is keyframes,
    )


def reference_from_image(jpeg_bytes: bytes, *, width: int = ANALYSIS_WIDTH) -> np.ndarray:
    """The classroom's reference still (JPEG/PNG bytes) as grayscale at the analysis width."""
    gray = cv2.imdecode(np.frombuffer(jpeg_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise SanityError("<reference image>", "not a decodable image")
    return _scaled(np.asarray(gray, dtype=np.uint8), width)


def reference_from_clip(path: Path | str, *, sample_fps: float = 1.0) -> np.ndarray:
    """A reference still from a clip of the classroom: the per-pixel median of its samples,
    so people who walk through do not become part of the room."""
    samples, _ = _sample(Path(path), sample_fps, SanityThresholds())
    stack = np.stack([s.small for s in samples])
    return np.median(stack, axis=0).astype(np.uint8)
