"""What a proven clip's picture says: a table over the decoded flags. Another classroom's view
is a hard reason (its footage signed with this room's key) when the picture does not fit this
classroom's own view; a classroom without a view of its own gets only a warning for a picture
like another room's (rooms built to one plan look alike); a picture that fits no classroom's
view stays the ``camera_moved`` warning. (The verdicts they give: ``test_verdict``'s table.)"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ingest_server.rules.clip_picture import picture_reasons
from ingest_server.rules.clip_proof import DecodedClip
from ingest_server.rules.reasons import LANGUAGES, ReasonCode, Severity, render

C = ReasonCode
START = datetime(2026, 11, 30, 0, 30, tzinfo=UTC)
PARAMS = {"window_no": 2, "window_start_at": "x", "window_end_at": "y"}
HONEST = DecodedClip(frames=900, duration_s=60.0, frame_rate=15.0, reference_similarity=0.71)
MOVED = DecodedClip(
    frames=900, duration_s=60.0, frame_rate=15.0, moved=True, reference_similarity=0.02
)


def other(classroom: str = "room-b", similarity: float = 0.78, **flags: bool) -> DecodedClip:
    """A moved clip whose picture clearly shows ``classroom``'s view."""
    return DecodedClip(
        frames=900,
        duration_s=60.0,
        frame_rate=15.0,
        moved=True,
        reference_similarity=0.0,
        other_classroom=classroom,
        other_similarity=similarity,
        **flags,
    )


ROWS = [
    ("honest", HONEST, []),
    ("moved, no classroom's view", MOVED, [C.CAMERA_MOVED]),
    ("another classroom's view", other(), [C.CLIP_OTHER_CLASSROOM]),
    (
        "another classroom's view, this room without one: a warning",
        DecodedClip(frames=900, duration_s=60.0, frame_rate=15.0, other_classroom="room-b"),
        [C.CLIP_RESEMBLES_OTHER_CLASSROOM],
    ),
    (
        "another classroom's, frozen too",
        other(frozen=True),
        [C.VIDEO_FROZEN, C.CLIP_OTHER_CLASSROOM],
    ),
    ("black and moved", DecodedClip(black=True, moved=True), [C.VIDEO_BLACK, C.CAMERA_MOVED]),
    ("black only", DecodedClip(black=True), [C.VIDEO_BLACK]),
    ("frozen only", DecodedClip(frozen=True), [C.VIDEO_FROZEN]),
    # The checker names another classroom only for a moved clip; the name alone decides.
    ("an empty name is no classroom", other(classroom=""), [C.CAMERA_MOVED]),
]


@pytest.mark.parametrize(("decoded", "codes"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_picture_reasons(decoded: DecodedClip, codes: list[ReasonCode]) -> None:
    assert [r.code for r in picture_reasons(decoded, PARAMS)] == codes


def test_another_classroom_is_hard_and_names_the_room_with_its_evidence() -> None:
    (reason,) = picture_reasons(other("room-102", 0.784), PARAMS)
    assert reason.severity is Severity.HARD
    assert picture_reasons(MOVED, PARAMS)[0].severity is Severity.WARNING
    assert dict(reason.params) == {
        **PARAMS,
        "other_classroom": "room-102",
        "other_match_pct": 78,
        "own_match_pct": 0,
    }
    window = {**PARAMS, "window_start_at": START.isoformat(), "window_end_at": START.isoformat()}
    (shown,) = picture_reasons(other("room-102", 0.784), window)
    zh, en = (render(shown, lang) for lang in LANGUAGES)
    assert "另一间教室（room-102）" in zh and "78%" in zh
    assert en.startswith("Spot-check clip 2 (") and "shows another classroom (room-102)" in en


def test_without_a_view_of_its_own_a_lookalike_room_is_a_warning_naming_it() -> None:
    """No own reference view: nothing says the picture is not this room's, so another room's
    look-alike is shown to a person (which room, how well it fits), not held against the
    session; the share of this room's view is not made up."""
    unviewed = replace(other("room-102", 0.784), moved=False, reference_similarity=None)
    (reason,) = picture_reasons(unviewed, PARAMS)
    assert reason.code is C.CLIP_RESEMBLES_OTHER_CLASSROOM
    assert reason.severity is Severity.WARNING
    assert dict(reason.params) == {**PARAMS, "other_classroom": "room-102", "other_match_pct": 78}
    window = {**PARAMS, "window_start_at": START.isoformat(), "window_end_at": START.isoformat()}
    zh, en = (render(picture_reasons(unviewed, window)[0], lang) for lang in LANGUAGES)
    assert "room-102" in zh and "78%" in zh and "没有参考画面" in zh
    assert "room-102" in en and "78%" in en and "no reference view" in en
