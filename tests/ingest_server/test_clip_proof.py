"""The window-proof rule: a table with every reason on both sides of each threshold."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ingest_server.rules.clip_proof import (
    ClipFacts,
    DecodedClip,
    ProofOutcome,
    ProofPolicy,
    WindowFacts,
    best_proof,
    clip_server_bounds,
    prove_window,
)
from ingest_server.rules.reasons import LANGUAGES, ReasonCode, render
from ingest_server.rules.windows import Window

C = ReasonCode
S = timedelta(seconds=1)
START = datetime(2026, 5, 6, 1, 30, tzinfo=UTC)
WINDOW = WindowFacts(2, Window(START, START + 60 * S), "cut-s-1-1")
DEVICE = "cam-101"
GOOD = ClipFacts(
    clip_id=1,
    upload_id="u1",
    device_id=DEVICE,
    cmd_id="cut-s-1-1",
    sha256="a" * 64,
    cut_start=START,
    cut_end=START + 60 * S,
    clock_offset_s=0.0,
    duration_s=60.0,
    frames=900,
    decoded=DecodedClip(frames=900, duration_s=60.0, frame_rate=15.0),
)
POLICY = ProofPolicy()  # 90 % coverage, 2 s keyframe tolerance, 10 % frame tolerance


def decoded(**changes) -> DecodedClip:
    assert GOOD.decoded is not None
    return replace(GOOD.decoded, **changes)


def shifted(seconds: float, **changes) -> ClipFacts:
    """The good clip cut ``seconds`` later (device clock, no offset)."""
    delta = timedelta(seconds=seconds)
    return replace(GOOD, cut_start=GOOD.cut_start + delta, cut_end=GOOD.cut_end + delta, **changes)


def short(seconds: float) -> ClipFacts:
    """A clip of ``seconds`` starting at the window's start, decoded at that length."""
    return replace(
        GOOD,
        cut_end=START + timedelta(seconds=seconds),
        duration_s=seconds,
        decoded=decoded(duration_s=seconds, frames=round(15 * seconds)),
    )


ROWS = [
    ("honest clip", GOOD, ProofOutcome.PROVEN, []),
    # -- device
    (
        "another camera",
        replace(GOOD, device_id="cam-102"),
        ProofOutcome.FAILED,
        [C.CLIP_WRONG_DEVICE],
    ),
    # -- command
    (
        "another command",
        replace(GOOD, cmd_id="cut-s-1-0"),
        ProofOutcome.FAILED,
        [C.CLIP_WRONG_WINDOW],
    ),
    ("no command", replace(GOOD, cmd_id=None), ProofOutcome.FAILED, [C.CLIP_WRONG_WINDOW]),
    # -- not decoded yet: nothing said
    ("check pending", replace(GOOD, decoded=None), ProofOutcome.CHECKING, []),
    # -- decodability
    (
        "undecodable",
        replace(GOOD, decoded=DecodedClip(error="moov atom not found")),
        ProofOutcome.FAILED,
        [C.CLIP_UNREADABLE],
    ),
    (
        "no frames",
        replace(GOOD, decoded=decoded(frames=0)),
        ProofOutcome.FAILED,
        [C.CLIP_UNREADABLE],
    ),
    # -- length: 90 % of 60 s minus the 2 s keyframe tolerance = 52 s
    ("52 s clip: just long enough, but covers 54 of 60 s", short(52), ProofOutcome.PROVEN, []),
    ("51.9 s clip", short(51.9), ProofOutcome.FAILED, [C.CLIP_TOO_SHORT, C.CLIP_OUTSIDE_WINDOW]),
    ("2 s clip", short(2), ProofOutcome.FAILED, [C.CLIP_TOO_SHORT, C.CLIP_OUTSIDE_WINDOW]),
    (
        "manifest says 60 s, decoding finds 2 s",
        replace(GOOD, decoded=decoded(duration_s=2.0, frames=30)),
        ProofOutcome.FAILED,
        [C.CLIP_TOO_SHORT, C.CLIP_FRAMES_MISMATCH],
    ),
    # -- coverage: shifted by 8 s covers 52 + 2 s of slack = 54 s = 90 %
    ("8 s late", shifted(8), ProofOutcome.PROVEN, []),
    ("8.1 s late", shifted(8.1), ProofOutcome.FAILED, [C.CLIP_OUTSIDE_WINDOW]),
    ("8 s early", shifted(-8), ProofOutcome.PROVEN, []),
    ("8.1 s early", shifted(-8.1), ProofOutcome.FAILED, [C.CLIP_OUTSIDE_WINDOW]),
    ("cut months before", shifted(-90 * 86400), ProofOutcome.FAILED, [C.CLIP_OUTSIDE_WINDOW]),
    ("cut the next day", shifted(86400), ProofOutcome.FAILED, [C.CLIP_OUTSIDE_WINDOW]),
    (
        "bounds at the end of the calendar, mapped beyond it",
        replace(
            GOOD,
            cut_start=datetime(9999, 12, 31, 23, 58, tzinfo=UTC),
            cut_end=datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
            clock_offset_s=-400 * 86400.0,
        ),
        ProofOutcome.FAILED,
        [C.CLIP_OUTSIDE_WINDOW],
    ),
    # -- a device clock 20 min fast, stated in the manifest: mapped back onto the window
    ("clock 20 min fast, stated", shifted(1200, clock_offset_s=1200.0), ProofOutcome.PROVEN, []),
    ("clock 20 min fast, not stated", shifted(1200), ProofOutcome.FAILED, [C.CLIP_OUTSIDE_WINDOW]),
    # -- frames vs duration × rate: 900 expected, tolerance 10 % + 2 = 92
    ("808 frames", replace(GOOD, decoded=decoded(frames=808)), ProofOutcome.PROVEN, []),
    (
        "807 frames",
        replace(GOOD, decoded=decoded(frames=807)),
        ProofOutcome.FAILED,
        [C.CLIP_FRAMES_MISMATCH],
    ),
    ("992 frames", replace(GOOD, decoded=decoded(frames=992)), ProofOutcome.PROVEN, []),
    (
        "993 frames",
        replace(GOOD, decoded=decoded(frames=993)),
        ProofOutcome.FAILED,
        [C.CLIP_FRAMES_MISMATCH],
    ),
    (
        "no frame rate",
        replace(GOOD, decoded=decoded(frame_rate=0.0)),
        ProofOutcome.FAILED,
        [C.CLIP_FRAMES_MISMATCH],
    ),
    # -- stated duration vs decoded: 2 s keyframe tolerance
    ("manifest 62 s", replace(GOOD, duration_s=62.0), ProofOutcome.PROVEN, []),
    (
        "manifest 62.1 s",
        replace(GOOD, duration_s=62.1),
        ProofOutcome.FAILED,
        [C.CLIP_FRAMES_MISMATCH],
    ),
    # -- bytes already given for another window
    (
        "same bytes as window 1",
        replace(GOOD, first_used_by="s-1#1"),
        ProofOutcome.FAILED,
        [C.CLIP_DUPLICATE],
    ),
]


@pytest.mark.parametrize(("name", "clip", "outcome", "codes"), ROWS, ids=[r[0] for r in ROWS])
def test_prove_window(name: str, clip: ClipFacts, outcome: ProofOutcome, codes: list) -> None:
    proof = prove_window(WINDOW, clip, DEVICE, POLICY)
    assert proof.outcome is outcome, name
    assert [r.code for r in proof.reasons] == codes, name


def test_every_clip_reason_has_a_row_and_renders_with_its_evidence() -> None:
    produced = {
        r.code for _, clip, _, _ in ROWS for r in prove_window(WINDOW, clip, DEVICE).reasons
    }
    assert produced | {C.CLIP_CLOCK_MISMATCH} == {
        C.CLIP_CLOCK_MISMATCH,
        C.CLIP_WRONG_DEVICE,
        C.CLIP_WRONG_WINDOW,
        C.CLIP_UNREADABLE,
        C.CLIP_TOO_SHORT,
        C.CLIP_OUTSIDE_WINDOW,
        C.CLIP_FRAMES_MISMATCH,
        C.CLIP_DUPLICATE,
    }
    for _, clip, _, _ in ROWS:
        for reason in prove_window(WINDOW, clip, DEVICE).reasons:
            assert reason.params["window_no"] == 2
            for lang in LANGUAGES:
                assert render(reason, lang)


def test_outside_window_carries_the_mapped_bounds_and_shift() -> None:
    proof = prove_window(WINDOW, shifted(1200, clock_offset_s=600.0), DEVICE)
    (reason,) = proof.reasons
    assert reason.params["shift_s"] == 600.0
    assert reason.params["clip_start_at"] == (START + 600 * S).isoformat()
    assert reason.params["covered_pct"] == 0
    assert reason.params["clock_offset_s"] == 600.0
    assert "600" in render(reason, "en")


def test_coverage_share_is_a_parameter() -> None:
    strict = ProofPolicy(min_coverage=1.0, keyframe_tolerance_s=0.0)
    assert prove_window(WINDOW, shifted(1), DEVICE, strict).outcome is ProofOutcome.FAILED
    assert prove_window(WINDOW, GOOD, DEVICE, strict).outcome is ProofOutcome.PROVEN


def test_server_bounds_subtract_the_stated_offset() -> None:
    clip = shifted(120, clock_offset_s=120.0)
    assert clip_server_bounds(clip) == (START, START + 60 * S)


def test_best_proof_prefers_a_proof_then_the_own_camera_then_the_earliest() -> None:
    neighbour = replace(GOOD, clip_id=1, device_id="cam-102")
    broken = replace(GOOD, clip_id=2, decoded=DecodedClip(error="x"))
    late_good = replace(GOOD, clip_id=5)
    checking = replace(GOOD, clip_id=3, decoded=None)
    assert best_proof(WINDOW, (), DEVICE) is None
    pick = best_proof(WINDOW, (neighbour, broken, late_good), DEVICE)
    assert pick is not None and pick.clip is late_good and pick.outcome is ProofOutcome.PROVEN
    pick = best_proof(WINDOW, (neighbour, broken, checking), DEVICE)
    assert pick is not None and pick.clip is checking
    pick = best_proof(WINDOW, (neighbour, broken), DEVICE)
    assert pick is not None and pick.clip is broken
    pick = best_proof(WINDOW, (neighbour,), DEVICE)
    assert pick is not None and [r.code for r in pick.reasons] == [C.CLIP_WRONG_DEVICE]


@pytest.mark.parametrize(
    ("offsets", "clip_offset", "codes"),
    [
        ((), 86400.0, []),  # nothing stated to compare with
        ((0.0,), 120.0, []),
        ((0.0,), 120.1, [C.CLIP_CLOCK_MISMATCH]),
        ((0.0, 600.0), 600.0, []),  # a clock stepped mid-class is reported at both values
        ((1200.0,), 1200.0, []),  # 20 min fast, consistently
        ((0.0,), -86400.0, [C.CLIP_CLOCK_MISMATCH]),  # another day's footage, claimed "skew"
    ],
)
def test_the_stated_offset_must_be_one_the_camera_reported(
    offsets: tuple[float, ...], clip_offset: float, codes: list
) -> None:
    delta = timedelta(seconds=clip_offset)
    clip = replace(
        GOOD, cut_start=START + delta, cut_end=START + 60 * S + delta, clock_offset_s=clip_offset
    )
    proof = prove_window(WINDOW, clip, DEVICE, POLICY, offsets)
    assert [r.code for r in proof.reasons] == codes
    for reason in proof.reasons:
        assert reason.params["clip_offset_s"] == clip_offset
        assert "{" not in render(reason, "zh-CN")
