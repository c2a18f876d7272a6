"""Does a clip prove a window? (DESIGN.md §2, trust model): one pure rule over plain facts.

A clip proves a window only when every one of these holds, each failure being its own hard
reason that carries the evidence a person needs to check it:

* it came from the camera installed in the session's classroom (``clip_wrong_device``);
* its signed manifest names that window's command (``clip_wrong_window``);
* the server could decode it (``clip_unreadable``);
* its own length, the shorter of its cut bounds and its decoded duration, is at least
  ``min_coverage`` of the window (``clip_too_short``);
* its cut bounds, mapped to server time through the clock offset the device stated, cover at
  least ``min_coverage`` of the window, give or take a keyframe (``clip_outside_window``);
* its decoded frame count fits its decoded duration and frame rate, and the manifest's duration
  agrees with what was decoded (``clip_frames_mismatch``);
* its bytes are not already the clip of another window (``clip_duplicate``);
* the clock offset its manifest states is one the same camera stated in its reports of the
  session, give or take ``offset_tolerance_s`` (``clip_clock_mismatch``): another day's
  footage cannot be mapped onto the window by claiming a day's offset.

Only stored clips reach this rule, and a clip is stored only after its manifest's signature
was verified against the device's registered key; unsigned hints (``cut_done``) never do.
A clip the checker has not decoded yet is ``checking``: nothing is said about it until it has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from common.clock import to_utc
from ingest_server.rules.reasons import ParamValue, Reason, ReasonCode, iso_utc
from ingest_server.rules.windows import Window


@dataclass(frozen=True, slots=True)
class DecodedClip:
    """What the server's own decoding of a stored clip found (not what the manifest says).

    ``moved``: the picture does not match the classroom's reference view
    (``reference_similarity``, the share of keypoints that fit it); ``other_classroom``: the
    other classroom whose view it clearly shows instead (``other_similarity``), if any.
    """

    error: str | None = None
    frames: int = 0
    duration_s: float = 0.0
    frame_rate: float = 0.0
    black: bool = False
    frozen: bool = False
    moved: bool = False
    reference_similarity: float | None = None
    other_classroom: str | None = None
    other_similarity: float | None = None


@dataclass(frozen=True, slots=True)
class ClipFacts:
    """A stored clip as its signed manifest and the server's checks know it.

    ``cut_start``/``cut_end`` are in the device's clock; ``clock_offset_s`` is the device clock
    minus the server clock as the device measured it when cutting. ``decoded`` is ``None``
    while the check is pending. ``first_used_by`` names the window whose clip the same bytes
    already were (an earlier clip answering another command), else ``None``.
    """

    clip_id: int
    upload_id: str
    device_id: str
    cmd_id: str | None
    sha256: str
    cut_start: datetime
    cut_end: datetime
    clock_offset_s: float
    duration_s: float
    frames: int
    decoded: DecodedClip | None = None
    first_used_by: str | None = None


@dataclass(frozen=True, slots=True)
class WindowFacts:
    """A drawn window: its number in the session (1-based), bounds and cut command."""

    number: int
    window: Window
    cmd_id: str


@dataclass(frozen=True, slots=True)
class ProofPolicy:
    """Limits of the window-proof rule.

    ``min_coverage``: the share of the window a clip must cover (in server time) and the share
    of its length a clip must have. ``keyframe_tolerance_s``: cuts snap to keyframes (1 s apart
    on our agents, up to a GOP on an IP camera), so bounds may fall short by this much.
    ``frame_tolerance``: decoded frames may differ from duration × rate by this share (plus
    two frames for the ends); the manifest's duration may differ from the decoded one by
    ``keyframe_tolerance_s``. ``offset_tolerance_s``: how far a clip's stated clock offset may
    be from the nearest one the camera stated in its session reports (estimates move by the
    round trip they were measured over; a clock that was stepped is reported at both values).
    """

    min_coverage: float = 0.9
    keyframe_tolerance_s: float = 2.0
    frame_tolerance: float = 0.1
    offset_tolerance_s: float = 120.0


class ProofOutcome(StrEnum):
    PROVEN = "proven"
    CHECKING = "checking"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ClipProof:
    """The rule's answer for one clip and one window; ``reasons`` are hard when it failed."""

    clip: ClipFacts
    outcome: ProofOutcome
    reasons: tuple[Reason, ...] = ()


def clip_server_bounds(clip: ClipFacts) -> tuple[datetime, datetime]:
    """The clip's cut bounds in server time (device time minus the stated offset)."""
    offset = timedelta(seconds=clip.clock_offset_s)
    return to_utc(clip.cut_start) - offset, to_utc(clip.cut_end) - offset


def _round1(value: float) -> float:
    return round(value, 1)


def prove_window(
    window: WindowFacts,
    clip: ClipFacts,
    installed_device_id: str,
    policy: ProofPolicy | None = None,
    session_offsets: tuple[float, ...] = (),
) -> ClipProof:
    """Whether ``clip`` proves ``window`` of a session held where ``installed_device_id`` films;
    ``session_offsets`` are the clock offsets that camera stated in its reports of the session
    (none: nothing to compare with)."""
    policy = policy or ProofPolicy()
    base: dict[str, ParamValue] = {
        "window_no": window.number,
        "window_start_at": iso_utc(window.window.start),
        "window_end_at": iso_utc(window.window.end),
    }
    reasons: list[Reason] = []
    if clip.device_id != installed_device_id:
        reasons.append(
            Reason(
                ReasonCode.CLIP_WRONG_DEVICE,
                {**base, "device_id": clip.device_id, "installed_device_id": installed_device_id},
            )
        )
    if clip.cmd_id != window.cmd_id:
        reasons.append(Reason(ReasonCode.CLIP_WRONG_WINDOW, {**base, "cmd_id": clip.cmd_id or ""}))
    if reasons:
        return ClipProof(clip, ProofOutcome.FAILED, tuple(reasons))
    decoded = clip.decoded
    if decoded is None:
        return ClipProof(clip, ProofOutcome.CHECKING)
    if decoded.error is not None or decoded.frames <= 0:
        detail = decoded.error or "no video frames"
        reason = Reason(ReasonCode.CLIP_UNREADABLE, {**base, "detail": detail[:200]})
        return ClipProof(clip, ProofOutcome.FAILED, (reason,))

    window_s = (to_utc(window.window.end) - to_utc(window.window.start)).total_seconds()
    tolerance = policy.keyframe_tolerance_s
    cut_s = (to_utc(clip.cut_end) - to_utc(clip.cut_start)).total_seconds()
    own_s = min(cut_s, decoded.duration_s)
    if own_s < policy.min_coverage * window_s - tolerance:
        reasons.append(
            Reason(
                ReasonCode.CLIP_TOO_SHORT,
                {**base, "clip_s": _round1(own_s), "window_s": _round1(window_s)},
            )
        )
    try:
        start, end = clip_server_bounds(clip)
        slack = timedelta(seconds=tolerance)
        lo = max(start - slack, to_utc(window.window.start))
        hi = min(end + slack, to_utc(window.window.end))
    except OverflowError:  # bounds mapped beyond the calendar: nowhere near the window
        start = end = lo = hi = to_utc(window.window.start)
    covered = max(0.0, (hi - lo).total_seconds())
    share = min(1.0, covered / window_s) if window_s > 0 else 0.0
    if share < policy.min_coverage:
        reasons.append(
            Reason(
                ReasonCode.CLIP_OUTSIDE_WINDOW,
                {
                    **base,
                    "clip_start_at": iso_utc(start),
                    "clip_end_at": iso_utc(end),
                    "covered_pct": math.floor(share * 100),
                    "required_pct": round(policy.min_coverage * 100),
                    "shift_s": _round1((start - to_utc(window.window.start)).total_seconds()),
                    "clock_offset_s": _round1(clip.clock_offset_s),
                },
            )
        )
    expected = decoded.duration_s * decoded.frame_rate
    frames_off = abs(decoded.frames - expected) > policy.frame_tolerance * expected + 2
    duration_off = abs(clip.duration_s - decoded.duration_s) > tolerance
    if decoded.frame_rate <= 0 or frames_off or duration_off:
        reasons.append(
            Reason(
                ReasonCode.CLIP_FRAMES_MISMATCH,
                {
                    **base,
                    "frames": decoded.frames,
                    "expected_frames": round(expected),
                    "decoded_s": _round1(decoded.duration_s),
                    "stated_s": _round1(clip.duration_s),
                    "fps": _round1(decoded.frame_rate),
                },
            )
        )
    if clip.first_used_by is not None:
        reasons.append(
            Reason(ReasonCode.CLIP_DUPLICATE, {**base, "other_window": clip.first_used_by})
        )
    if session_offsets:
        nearest = min(session_offsets, key=lambda o: abs(o - clip.clock_offset_s))
        if abs(nearest - clip.clock_offset_s) > policy.offset_tolerance_s:
            params = {
                **base,
                "clip_offset_s": _round1(clip.clock_offset_s),
                "session_offset_s": _round1(nearest),
            }
            reasons.append(Reason(ReasonCode.CLIP_CLOCK_MISMATCH, params))
    if reasons:
        return ClipProof(clip, ProofOutcome.FAILED, tuple(reasons))
    return ClipProof(clip, ProofOutcome.PROVEN)


def best_proof(
    window: WindowFacts,
    clips: tuple[ClipFacts, ...],
    installed_device_id: str,
    policy: ProofPolicy | None = None,
    session_offsets: tuple[float, ...] = (),
) -> ClipProof | None:
    """The clip that speaks for ``window`` among those offered for it, judged by
    ``prove_window``: the earliest that proves it; else one still being checked; else the
    earliest failure of the installed camera's own clips; else another camera's. ``None``
    when no clip was offered."""
    proofs = [
        prove_window(window, clip, installed_device_id, policy, session_offsets) for clip in clips
    ]

    def rank(proof: ClipProof) -> tuple[int, int]:
        order = {ProofOutcome.PROVEN: 0, ProofOutcome.CHECKING: 1, ProofOutcome.FAILED: 2}
        own = proof.clip.device_id == installed_device_id
        return (order[proof.outcome] * 2 + (0 if own else 1), proof.clip.clip_id)

    return min(proofs, key=rank, default=None)
