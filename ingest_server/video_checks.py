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
* **frozen** — nothing in the picture moves beyond the sensor's noise: a feed that stopped, or
  a camera filming a printed photo (a still picture under fresh sensor noise). Compared on
  **keyframes only**: each keyframe is an independent encoding of what the sensor saw, while a
  static scene's P-frames are mostly skip blocks that copy their reference and would make any
  quiet room look frozen. Each keyframe is compared with each of the ``frozen_lookback``
  keyframes before it (10 s at the agent's keyframe a second, so slow motion adds up; the
  largest change counts, so a change in step with one lag shows against another) on its
  *structure*: luma averaged over blocks (``structure_width`` blocks across), which divides
  per-pixel noise by the block size, then fitted to the earlier one by gain and offset, so an
  exposure or light change over the whole picture is not motion. Each block's residual is
  divided by the noise expected there: the comparison's own robust spread (its median absolute
  deviation) plus a share of the block's contrast (the encoder's re-quantisation gathers on
  sharp edges), noise the clip itself shows, whatever the sensor, light or encoder quality. The
  change is the ``changed_blocks``-th largest ratio: noise alone gives ~2–4, something moving
  in a few blocks far more (``bench/frozen_margin.py`` prints the distributions). A
  keyframe repeats when its change is below ``frozen_change``; the clip is frozen when most
  keyframes repeat. A real, quiet room has people who move a little; a room in which nothing at
  all moves for most of a window cannot be told from a photograph of it, and is reported frozen.
* **moved** — ORB features of sampled frames matched to the classroom's reference still
  (``view_match``): the similarity is the share of keypoints that are homography inliers,
  median over a few samples. A small pan, zoom or lighting change keeps a homography; another
  room, or a camera turned to the wall, does not.
* **another classroom** — only for a clip that is moved, or whose classroom has no reference
  view (a camera in an adversary's hands need never send one): the same samples matched to the
  views of other classrooms (``view_match.other_view``). A clip that clearly shows one of them
  is another classroom's footage signed with this classroom's key, not a camera that turned.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from ingest_server.errors import IngestError
from ingest_server.view_match import View, median_similarity, other_view, scaled

# Pixel formats / colour range that carry full-range (0–255) luma; others are TV range 16–235.
_FULL_RANGE_PIX_FMTS = ("yuvj420p", "yuvj422p", "yuvj444p")
_COLOR_RANGE_JPEG = 2  # AVCOL_RANGE_JPEG
ANALYSIS_WIDTH = 480  # frames are scaled down to this width for the black and moved checks


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
    # A keyframe repeats the earlier ones below this structural change (in units of the noise
    # expected per block). bench/frozen_margin.py: still pictures under noise score up to ~3.8,
    # quiet live scenes from ~4.4 (a window's light swinging 5 % under +/-6 noise at CRF 40).
    frozen_change: float = 4.1
    frozen_lookback: int = 10  # how many earlier keyframes a keyframe is compared with (10 s)
    structure_width: int = 40  # blocks across the picture for the structural comparison
    changed_blocks: int = 5  # the change is the n-th largest block ratio (of ~500-1000)
    # Lowest noise spread a change is measured in (luma levels): a noiseless frozen picture has
    # none, and the encoder's re-quantisation must not count as motion there.
    noise_floor: float = 0.5
    # Highest: block-averaged sensor noise stays below this (measured up to ~1.5 at +/-6 levels
    # and CRF 35); a larger spread is the whole picture changing, which is motion.
    noise_ceiling: float = 3.0
    # Expected re-quantisation noise per level of a block's contrast with its neighbours: a
    # printed test chart's sharp edges at 300 kbit/s scored 5.4 without it, 2.8 with it.
    edge_noise: float = 0.05
    # Frozen when at least this share of keyframes repeat: a clip whose feed froze for most of
    # its length is frozen even if something moved for a moment.
    frozen_share: float = 0.6
    moved_similarity: float = 0.07  # moved below this share of keypoints that are inliers
    # A moved clip shows another classroom when its median inlier share against that room's
    # view reaches this: a clear match. bench/other_view_margin.py: unrelated views score up
    # to ~0.09, a nudged and dimmer view of the right room from ~0.62.
    other_view_similarity: float = 0.2
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
    median_keyframe_change: float  # median structural change of keyframes (noise spreads)
    keyframe_changes: tuple[float, ...]  # each keyframe's change, in order, for the record
    reference_similarity: float | None  # median inlier share against the reference
    # The other classroom's view a moved clip clearly shows (the key it was given under), the
    # median inlier share against it, and how many other views were compared (0: none asked).
    other_view: str | None
    other_view_similarity: float | None
    other_views_compared: int
    frames_sampled: int  # frames analysed for black and moved
    keyframes_compared: int  # keyframes analysed for frozen
    keyframes_only: bool  # whether the black/moved samples could be keyframes alone
    # What the clip really is, from its own packets (not from what its manifest claims):
    decoded_frames: int  # video packets (frames) in the clip
    decoded_duration_s: float  # last minus first timestamp plus the last frame's duration
    frame_rate: float  # the stream's average frame rate


@dataclass(frozen=True, slots=True)
class _Sample:
    small: np.ndarray  # luma scaled to the analysis width (uint8), banner included
    mean: float  # of the luma below the banner
    std: float


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


@dataclass(frozen=True, slots=True)
class _StreamFacts:
    """What the clip's own packets say: how many frames, over how long, at what rate."""

    frames: int
    duration_s: float
    frame_rate: float
    keyframe_changes: list[float]  # with keyframes only: each keyframe's structural change


def structure(luma: np.ndarray, width: int) -> np.ndarray:
    """``luma`` averaged over blocks, ``width`` blocks across (float32): the picture's layout
    with per-pixel sensor noise divided by the block size."""
    h, w = luma.shape
    width = max(1, min(width, w))
    height = max(1, round(h * width / w))
    return np.asarray(
        cv2.resize(luma.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA),
        dtype=np.float32,
    )


def _fit_residual(current: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """What is left of ``current`` after fitting ``earlier`` to it by gain and offset (a light
    or exposure change over the whole picture is no motion)."""
    x = earlier.astype(np.float64)
    y = current.astype(np.float64)
    design = np.stack([x.ravel(), np.ones(x.size)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y.ravel(), rcond=None)
    return np.asarray(y - (coef[0] * x + coef[1]))


def _robust_spread(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation: the standard deviation, were ``values`` only
    noise, whatever a few blocks where something moved hold."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def keyframe_changes(structures: list[np.ndarray], limits: SanityThresholds) -> list[float]:
    """Each keyframe's structural change (all but the first), from its ``structure`` arrays.

    A keyframe is fitted to each of the ``frozen_lookback`` keyframes before it; each block's
    residual is divided by the noise expected there: the comparison's own robust spread, kept
    between ``noise_floor`` and ``noise_ceiling`` levels, plus ``edge_noise`` times the block's
    contrast with its neighbours, because the encoder's re-quantisation gathers on sharp edges.
    The ceiling is what block-averaged noise can reach: when the whole picture changes (a pan,
    a scrolling view) the spread is that change, not noise. The change against one earlier
    keyframe is the ``changed_blocks``-th largest of those ratios (something moved in at least
    that many blocks: a small ball far off, a person at the back of a large room); a keyframe's
    change is the largest against any of them. Noise alone gives ~2-4; motion, far more.
    """
    changes: list[float] = []
    for i in range(1, len(structures)):
        current = structures[i]
        gx = cv2.Sobel(current, cv2.CV_32F, 1, 0, ksize=3) / 8
        gy = cv2.Sobel(current, cv2.CV_32F, 0, 1, ksize=3) / 8
        edges = limits.edge_noise * np.hypot(gx, gy)
        best = 0.0
        for earlier in structures[max(0, i - limits.frozen_lookback) : i]:
            if earlier.shape != current.shape:
                continue
            residual = _fit_residual(current, earlier)
            spread = min(max(_robust_spread(residual), limits.noise_floor), limits.noise_ceiling)
            ratio = (np.abs(residual) / (spread + edges)).ravel()
            if ratio.size >= limits.changed_blocks:
                rank = ratio.size - limits.changed_blocks
                best = max(best, float(np.partition(ratio, rank)[rank]))
        changes.append(best)
    return changes


def _decode_samples(
    path: Path, sample_fps: float, limits: SanityThresholds, *, keyframes_only: bool
) -> tuple[list[_Sample], _StreamFacts]:
    """Frames at most one per ``1 / sample_fps``, and the clip's facts from its packets.

    Packets are counted as they are demuxed (a frame is one packet in H.264 without B-frame
    reordering quirks), so the count costs nothing beyond reading the file. With
    ``keyframes_only`` the facts also carry each sampled keyframe's structural change
    (``keyframe_changes``).
    """
    samples: list[_Sample] = []
    structures: list[np.ndarray] = []
    period = 1.0 / sample_fps
    # Slack, so a keyframe forced "every second" but landing a frame early is still taken.
    slack = min(0.05, 0.25 * period)
    next_time: float | None = None
    packets = 0
    first_pts: int | None = None
    last_pts: int | None = None
    last_duration = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SanityError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if keyframes_only:
                stream.codec_context.skip_frame = "NONKEY"
            time_base = stream.time_base
            rate = stream.average_rate or stream.guessed_rate
            for packet in container.demux(stream):
                if packet.size == 0:
                    frames = packet.decode()  # the flush at the end: the decoder's last frames
                else:
                    packets += 1
                    if packet.pts is not None:
                        first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                        if last_pts is None or packet.pts >= last_pts:
                            last_pts, last_duration = packet.pts, packet.duration or 0
                    frames = packet.decode()
                for frame in frames:
                    if frame.pts is None or time_base is None:
                        continue
                    t = float(frame.pts * time_base)
                    if next_time is not None and t < next_time - slack:
                        continue
                    next_time = (t if next_time is None else next_time) + period
                    while next_time <= t:  # after a gap, sample again from here on
                        next_time += period
                    luma = _luma(frame)
                    if keyframes_only:
                        structures.append(
                            structure(
                                luma[_banner_rows(luma.shape[0], limits) :],
                                limits.structure_width,
                            )
                        )
                    small = scaled(luma, limits.analysis_width)
                    small_body = small[_banner_rows(small.shape[0], limits) :]
                    samples.append(
                        _Sample(small, float(small_body.mean()), float(small_body.std()))
                    )
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise SanityError(path, str(exc)) from exc
    duration = 0.0
    if first_pts is not None and last_pts is not None and time_base is not None:
        if not last_duration and rate:
            last_duration = round(1 / (rate * time_base))
        duration = float((last_pts - first_pts + last_duration) * time_base)
    # No declared rate (rare): the rate the packets themselves show.
    measured = packets / duration if duration > 0 else 0.0
    frame_rate = float(rate) if rate else measured
    changes = keyframe_changes(structures, limits)
    return samples, _StreamFacts(packets, duration, frame_rate, changes)


def _sample(
    path: Path, sample_fps: float, limits: SanityThresholds
) -> tuple[list[_Sample], list[_Sample], _StreamFacts]:
    """(samples for black and moved, keyframe samples for frozen, the clip's facts)."""
    if sample_fps <= 0:
        raise ValueError("sample_fps must be positive")
    keyframes, facts = _decode_samples(path, sample_fps, limits, keyframes_only=True)
    samples = keyframes
    if len(keyframes) * 2 < int(facts.duration_s * sample_fps):
        # Keyframes too sparse for the sampling rate (an IP camera with a long GOP): decode
        # every frame and sample by time for black and moved.
        samples, _ = _decode_samples(path, sample_fps, limits, keyframes_only=False)
    if not samples:
        raise SanityError(path, "no decodable video frames")
    return samples, keyframes, facts


def check_clip(
    path: Path | str,
    *,
    reference: np.ndarray | View | None = None,
    other_views: Callable[[], Mapping[str, View]] | None = None,
    sample_fps: float = 1.0,
    thresholds: SanityThresholds | None = None,
) -> SanityReport:
    """Sample ``path`` at about ``sample_fps`` and judge black, frozen and (given the classroom's
    ``reference`` from ``reference_from_image``/``reference_from_clip``) moved.

    The three flags are independent: a covered lens also reads moved (there is nothing to
    match) and often frozen, so a verdict should report ``video_black`` first. A clip that is
    moved, or has no reference to match, is then matched to ``other_views()`` (other
    classrooms' views by their ids; asked for only then, as most clips never need them):
    ``other_view`` names the one it clearly shows. Raises ``SanityError`` if the file cannot
    be decoded.
    """
    limits = thresholds or SanityThresholds()
    samples, keyframes, facts = _sample(Path(path), sample_fps, limits)
    dark = [s.mean < limits.black_luma and s.std < limits.black_std for s in samples]
    dark_share = sum(dark) / len(samples)
    changes = facts.keyframe_changes
    repeats = sum(c < limits.frozen_change for c in changes)
    frozen_fraction = repeats / len(changes) if changes else 0.0
    step = max(1, len(samples) // limits.reference_samples)
    picked = samples[step // 2 :: step][: limits.reference_samples]
    frames = [View(s.small, limits.banner_fraction) for s in picked]
    similarity: float | None = None
    if reference is not None:
        own = reference if isinstance(reference, View) else View(reference, limits.banner_fraction)
        similarity = median_similarity(own, frames)
    found = None
    compared = 0
    if other_views is not None and (similarity is None or similarity < limits.moved_similarity):
        others = other_views()
        compared = len(others)
        found = other_view(
            frames, others, screen=limits.moved_similarity, accept=limits.other_view_similarity
        )
    return SanityReport(
        black=dark_share >= limits.black_share,
        # One pair of keyframes proves nothing: frozen needs at least three keyframes.
        frozen=len(changes) >= 2 and frozen_fraction >= limits.frozen_share,
        moved=None if similarity is None else similarity < limits.moved_similarity,
        mean_luma=float(np.mean([s.mean for s in samples])),
        luma_std=statistics.median(s.std for s in samples),
        dark_share=dark_share,
        frozen_fraction=frozen_fraction,
        median_keyframe_change=statistics.median(changes) if changes else 0.0,
        keyframe_changes=tuple(changes),
        reference_similarity=similarity,
        other_view=found.key if found else None,
        other_view_similarity=found.similarity if found else None,
        other_views_compared=compared,
        frames_sampled=len(samples),
        keyframes_compared=len(keyframes),
        keyframes_only=samples is keyframes,
        decoded_frames=facts.frames,
        decoded_duration_s=facts.duration_s,
        frame_rate=facts.frame_rate,
    )


def reference_from_image(jpeg_bytes: bytes, *, width: int = ANALYSIS_WIDTH) -> np.ndarray:
    """The classroom's reference still (JPEG/PNG bytes) as grayscale at the analysis width."""
    gray = cv2.imdecode(np.frombuffer(jpeg_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise SanityError("<reference image>", "not a decodable image")
    return scaled(np.asarray(gray, dtype=np.uint8), width)


def reference_from_clip(path: Path | str, *, sample_fps: float = 1.0) -> np.ndarray:
    """A reference still from a clip of the classroom: the per-pixel median of its samples,
    so people who walk through do not become part of the room."""
    samples, _, _ = _sample(Path(path), sample_fps, SanityThresholds())
    stack = np.stack([s.small for s in samples])
    return np.median(stack, axis=0).astype(np.uint8)
