"""Verdicts and reason sentences: a table over every reason code and both sides of every limit."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

import pytest

from common.geo import EARTH_MEAN_RADIUS_M, Coordinate, Datum, convert
from ingest_server.rules.clip_proof import ClipFacts, DecodedClip, WindowFacts
from ingest_server.rules.photo_match import (
    PhotoFacts,
    PhotoKind,
    photo_match,
)
from ingest_server.rules.photo_reasons import PhotoEvidence
from ingest_server.rules.reasons import (
    LANGUAGES,
    SEVERITY,
    TEMPLATES,
    Reason,
    ReasonCode,
    Severity,
    format_number,
    pick_language,
    render,
    template_fields,
)
from ingest_server.rules.session import ClassroomFacts, SessionFacts
from ingest_server.rules.verdict import (
    Interval,
    RecordingEvent,
    RecordingEventKind,
    SessionEvidence,
    SessionVerdict,
    VerdictPolicy,
    VerdictState,
    WindowEvidence,
    judge,
    recorded_seconds,
)
from ingest_server.rules.windows import Window
from tests.ingest_server.photo_rows import photo_trust_rows

SHANGHAI = ZoneInfo("Asia/Shanghai")
S, MIN, H = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)
C = ReasonCode
POLICY = VerdictPolicy()
GRACE = timedelta(seconds=POLICY.clip_grace_s)  # 24 h online
DEADLINE = timedelta(seconds=POLICY.clip_deadline_s)  # 7 days
PHOTO_GRACE = timedelta(seconds=POLICY.photo_grace_s)  # 2 h
ROOM_AT = Coordinate(31.2304, 121.4737)  # Shanghai, WGS-84
ROOM = ClassroomFacts("room-1", ROOM_AT)
PRESET_S = 90 * 60
TOLERANCE_S = 300


def north_of(origin: Coordinate, metres: float) -> Coordinate:
    return Coordinate(origin.lat + math.degrees(metres / EARTH_MEAN_RADIUS_M), origin.lon)


def make_session(start: datetime, preset_s: float = PRESET_S) -> SessionFacts:
    return SessionFacts(
        session_id="s-1",
        classroom_id="room-1",
        device_id="dev-1",
        lecturer_id="lec-1",
        scheduled_start=start,
        preset_duration_s=preset_s,
        opened_at=start,
        closed_at=start + timedelta(seconds=preset_s),
    )


def make_photo(
    session: SessionFacts,
    kind: PhotoKind,
    *,
    shift: timedelta = timedelta(0),
    where: Coordinate | None = ROOM_AT,
    lecturer: str = "lec-1",
    reused_from: str | None = None,
    photo_id: str | None = None,
) -> PhotoEvidence:
    at = (session.start if kind == PhotoKind.OPENING else session.end) + shift
    facts = PhotoFacts(photo_id or f"p-{kind}", lecturer, kind, at, where)
    return PhotoEvidence(facts, photo_match(facts, session, ROOM), reused_from)


class ClipStatus(StrEnum):
    """How far a window's clip got, for building table rows."""

    MISSING = "missing"  # asked for, nothing stored yet (an upload under way is the same)
    CHECKING = "checking"  # stored, not decoded yet
    STORED = "stored"  # stored and decoded: it proves its window


def good_clip(window: WindowFacts, **decoded) -> ClipFacts:
    """The installed camera's honest clip of ``window``, decoded: 60 s at 15 fps."""
    return ClipFacts(
        clip_id=window.number,
        upload_id=f"u-{window.number}",
        device_id="dev-1",
        cmd_id=window.cmd_id,
        sha256=f"{window.number:064x}",
        cut_start=window.window.start,
        cut_end=window.window.end,
        clock_offset_s=0.0,
        duration_s=60.0,
        frames=900,
        decoded=DecodedClip(frames=900, duration_s=60.0, frame_rate=15.0, **decoded),
    )


def window_evidence(
    facts: WindowFacts, requested: datetime, status: ClipStatus = ClipStatus.STORED, **decoded
) -> WindowEvidence:
    if status is ClipStatus.MISSING:
        return WindowEvidence(facts, (), requested)
    clip = good_clip(facts, **decoded)
    if status is ClipStatus.CHECKING:
        clip = replace(clip, decoded=None)
    return WindowEvidence(facts, (clip,), requested)


def make_windows(session: SessionFacts, status: ClipStatus = ClipStatus.STORED) -> tuple:
    starts = [session.start + 10 * MIN, session.start + 40 * MIN, session.start + 80 * MIN]
    return tuple(
        window_evidence(
            WindowFacts(n, Window(s, s + MIN), f"cut-s-1-{n - 1}"), session.end + 10 * S, status
        )
        for n, s in enumerate(starts, start=1)
    )


def baseline(start: datetime = datetime(2024, 5, 6, 9, 0, tzinfo=SHANGHAI)) -> SessionEvidence:
    """A session with all its evidence in order: verified."""
    session = make_session(start)
    return SessionEvidence(
        session=session,
        recorded_s=PRESET_S,
        windows=make_windows(session),
        photos=(
            make_photo(session, PhotoKind.OPENING, shift=-5 * MIN),
            make_photo(session, PhotoKind.CLOSING, shift=3 * MIN),
        ),
        duration_tolerance_s=TOLERANCE_S,
    )


BASE = baseline()
END = BASE.session.end
REQUESTED = END + 10 * S  # windows are asked for once the class is over
LATER = END + 3 * H  # every grace that matters for complete evidence is over
LAST_WINDOW_END = BASE.windows[-1].window.end


def with_window(
    evidence: SessionEvidence, index: int, status: ClipStatus = ClipStatus.STORED, **decoded
) -> SessionEvidence:
    windows = list(evidence.windows)
    requested = evidence.session.end + 10 * S
    windows[index] = window_evidence(windows[index].facts, requested, status, **decoded)
    return replace(evidence, windows=tuple(windows))


def with_photo(evidence: SessionEvidence, kind: PhotoKind, **kwargs) -> SessionEvidence:
    others = tuple(p for p in evidence.photos if p.photo.kind != kind)
    return replace(evidence, photos=(*others, make_photo(evidence.session, kind, **kwargs)))


def without_photo(evidence: SessionEvidence, kind: PhotoKind) -> SessionEvidence:
    return replace(evidence, photos=tuple(p for p in evidence.photos if p.photo.kind != kind))


def open_session(evidence: SessionEvidence) -> SessionEvidence:
    """The device has not reported the session stopped."""
    return replace(evidence, session=replace(evidence.session, closed_at=None), recorded_s=None)


REQUIRED_S = PRESET_S - TOLERANCE_S
NEAR_GCJ = convert(north_of(ROOM_AT, 60), Datum.GCJ02)
OP, CL = PhotoKind.OPENING, PhotoKind.CLOSING

# (id, evidence, now, state, codes in order)
ROWS = [
    ("baseline", BASE, LATER, "verified", []),
    # ---- duration: recorded vs preset − tolerance, ± 1 s
    (
        "recorded = required - 1 s",
        replace(BASE, recorded_s=REQUIRED_S - 1),
        LATER,
        "rejected",
        [C.SHORT_DURATION],
    ),
    ("recorded = required", replace(BASE, recorded_s=REQUIRED_S), LATER, "verified", []),
    ("recorded = required + 1 s", replace(BASE, recorded_s=REQUIRED_S + 1), LATER, "verified", []),
    ("recorded nothing", replace(BASE, recorded_s=0.0), LATER, "rejected", [C.SHORT_DURATION]),
    (
        "no tolerance, 1 s short",
        replace(BASE, recorded_s=PRESET_S - 1, duration_tolerance_s=0),
        LATER,
        "rejected",
        [C.SHORT_DURATION],
    ),
    # ---- the session still running: nothing said about windows
    (
        "in progress, 1 s before the end",
        open_session(replace(BASE, windows=make_windows(BASE.session, ClipStatus.MISSING))),
        END - S,
        "pending",
        [C.SESSION_IN_PROGRESS],
    ),
    (
        "in progress, no windows drawn yet",
        open_session(replace(BASE, windows=())),
        END - 30 * MIN,
        "pending",
        [C.SESSION_IN_PROGRESS],
    ),
    # ---- the stop report: awaited while the device was online < 24 h since the end
    (
        "report awaited at the end",
        open_session(BASE),
        END,
        "pending",
        [C.AWAITING_RECORDING_REPORT],
    ),
    (
        "report awaited, grace - 1 s",
        open_session(BASE),
        END + GRACE - S,
        "pending",
        [C.AWAITING_RECORDING_REPORT],
    ),
    (
        "report missing at grace",
        open_session(BASE),
        END + GRACE,
        "rejected",
        [C.RECORDING_UNREPORTED],
    ),
    (
        "report missing, grace + 1 s",
        open_session(BASE),
        END + GRACE + S,
        "rejected",
        [C.RECORDING_UNREPORTED],
    ),
    (
        "report awaited from an offline device",
        replace(open_session(BASE), offline=(Interval(END),)),
        END + 6 * 24 * H,
        "pending",
        [C.AWAITING_RECORDING_REPORT],
    ),
    (
        "report missing at the absolute deadline",
        replace(open_session(BASE), offline=(Interval(END),)),
        END + DEADLINE,
        "rejected",
        [C.RECORDING_UNREPORTED],
    ),
    # ---- windows
    ("windows never drawn", replace(BASE, windows=()), LATER, "pending", [C.WINDOWS_NOT_DRAWN]),
    (
        "clip awaited, grace - 1 s",
        with_window(BASE, 2, status=ClipStatus.MISSING),
        REQUESTED + GRACE - S,
        "pending",
        [C.CLIP_AWAITED],
    ),
    (
        "clip missing at grace",
        with_window(BASE, 2, status=ClipStatus.MISSING),
        REQUESTED + GRACE,
        "rejected",
        [C.CLIP_MISSING],
    ),
    (
        "clip missing, grace + 1 s",
        with_window(BASE, 2, status=ClipStatus.MISSING),
        REQUESTED + GRACE + S,
        "rejected",
        [C.CLIP_MISSING],
    ),
    (
        "upload under way, grace - 1 s",
        with_window(BASE, 0, status=ClipStatus.MISSING),
        REQUESTED + GRACE - S,
        "pending",
        [C.CLIP_AWAITED],
    ),
    (
        "upload stuck past grace",
        with_window(BASE, 0, status=ClipStatus.MISSING),
        REQUESTED + GRACE + S,
        "rejected",
        [C.CLIP_MISSING],
    ),
    (
        "clip awaited: device offline 10 h of the 24 h",
        replace(
            with_window(BASE, 2, status=ClipStatus.MISSING),
            offline=(Interval(LAST_WINDOW_END + H, LAST_WINDOW_END + 11 * H),),
        ),
        REQUESTED + GRACE + S,
        "pending",
        [C.CLIP_AWAITED],
    ),
    (
        "clip missing after 24 h online around 10 h offline",
        replace(
            with_window(BASE, 2, status=ClipStatus.MISSING),
            offline=(Interval(LAST_WINDOW_END + H, LAST_WINDOW_END + 11 * H),),
        ),
        REQUESTED + GRACE + 10 * H,
        "rejected",
        [C.CLIP_MISSING],
    ),
    (
        "clip awaited from a device offline for days",
        replace(
            with_window(BASE, 1, status=ClipStatus.MISSING),
            offline=(Interval(LAST_WINDOW_END),),
        ),
        END + DEADLINE - S,
        "pending",
        [C.CLIP_AWAITED],
    ),
    (
        "clip missing at the absolute deadline",
        replace(
            with_window(BASE, 1, status=ClipStatus.MISSING),
            offline=(Interval(LAST_WINDOW_END),),
        ),
        END + DEADLINE,
        "rejected",
        [C.CLIP_MISSING],
    ),
    ("black", with_window(BASE, 0, black=True), LATER, "rejected", [C.VIDEO_BLACK]),
    ("frozen", with_window(BASE, 2, frozen=True), LATER, "rejected", [C.VIDEO_FROZEN]),
    ("moved is a warning", with_window(BASE, 2, moved=True), LATER, "verified", [C.CAMERA_MOVED]),
    (
        "another classroom's view is hard",
        with_window(BASE, 1, moved=True, other_classroom="room-b", other_similarity=0.8),
        LATER,
        "rejected",
        [C.CLIP_OTHER_CLASSROOM],
    ),
    (
        "another classroom's look without a view of our own is a warning",
        with_window(BASE, 1, other_classroom="room-b", other_similarity=0.8),
        LATER,
        "verified",
        [C.CLIP_RESEMBLES_OTHER_CLASSROOM],
    ),
    (
        "window not due after an early close",
        replace(
            BASE,
            session=replace(BASE.session, closed_at=LAST_WINDOW_END - 30 * S),
            recorded_s=REQUIRED_S,
        ),
        LAST_WINDOW_END - 10 * S,
        "pending",
        [C.WINDOW_NOT_DUE],
    ),
    (
        "window due exactly at its end",
        replace(
            BASE,
            session=replace(BASE.session, closed_at=LAST_WINDOW_END - 30 * S),
            recorded_s=REQUIRED_S,
        ),
        LAST_WINDOW_END,
        "verified",
        [],
    ),
    # ---- photos: presence within the grace after the end
    (
        "opening photo awaited, grace - 1 s",
        without_photo(BASE, OP),
        END + PHOTO_GRACE - S,
        "pending",
        [C.PHOTO_AWAITED],
    ),
    (
        "opening photo missing at grace",
        without_photo(BASE, OP),
        END + PHOTO_GRACE,
        "rejected",
        [C.PHOTO_MISSING],
    ),
    (
        "closing photo missing, grace + 1 s",
        without_photo(BASE, CL),
        END + PHOTO_GRACE + S,
        "rejected",
        [C.PHOTO_MISSING],
    ),
    (
        "both photos missing",
        without_photo(without_photo(BASE, OP), CL),
        LATER,
        "rejected",
        [C.PHOTO_MISSING, C.PHOTO_MISSING],
    ),
    # ---- photos: time, Δt = tolerance ± 1 s
    ("opening at +tolerance", with_photo(BASE, OP, shift=900 * S), LATER, "verified", []),
    (
        "opening at +tolerance + 1 s",
        with_photo(BASE, OP, shift=901 * S),
        LATER,
        "rejected",
        [C.PHOTO_TIME_MISMATCH],
    ),
    ("opening at -tolerance + 1 s", with_photo(BASE, OP, shift=-899 * S), LATER, "verified", []),
    (
        "opening at -tolerance - 1 s",
        with_photo(BASE, OP, shift=-901 * S),
        LATER,
        "rejected",
        [C.PHOTO_TIME_MISMATCH],
    ),
    ("closing at +tolerance - 1 s", with_photo(BASE, CL, shift=899 * S), LATER, "verified", []),
    (
        "closing at +tolerance + 1 s",
        with_photo(BASE, CL, shift=901 * S),
        LATER,
        "rejected",
        [C.PHOTO_TIME_MISMATCH],
    ),
    # ---- photos: place, 99 m vs 101 m with radius 100
    ("opening 99 m away", with_photo(BASE, OP, where=north_of(ROOM_AT, 99)), LATER, "verified", []),
    (
        "opening 101 m away",
        with_photo(BASE, OP, where=north_of(ROOM_AT, 101)),
        LATER,
        "rejected",
        [C.PHOTO_OUT_OF_RANGE],
    ),
    ("closing in GCJ-02, 60 m", with_photo(BASE, CL, where=NEAR_GCJ), LATER, "verified", []),
    (
        "closing GCJ-02 numbers taken as WGS-84",
        with_photo(BASE, CL, where=Coordinate(NEAR_GCJ.lat, NEAR_GCJ.lon)),
        LATER,
        "rejected",
        [C.PHOTO_OUT_OF_RANGE],
    ),
    (
        "closing without location",
        with_photo(BASE, CL, where=None),
        LATER,
        "rejected",
        [C.PHOTO_LOCATION_MISSING],
    ),
    (
        "opening reused",
        with_photo(BASE, OP, reused_from="s-0"),
        LATER,
        "rejected",
        [C.PHOTO_REUSED],
    ),
    (
        "opening by someone else",
        with_photo(BASE, OP, lecturer="lec-9"),
        LATER,
        "rejected",
        [C.PHOTO_WRONG_LECTURER],
    ),
    (
        "a photo wrong in every way",
        with_photo(
            BASE, CL, shift=-H, where=north_of(ROOM_AT, 5000), lecturer="x", reused_from="s-0"
        ),
        LATER,
        "rejected",
        [C.PHOTO_WRONG_LECTURER, C.PHOTO_TIME_MISMATCH, C.PHOTO_OUT_OF_RANGE, C.PHOTO_REUSED],
    ),
    (
        "a good photo beside a bad one",
        replace(
            BASE,
            photos=(
                *BASE.photos,
                make_photo(BASE.session, OP, shift=2 * H, where=None, photo_id="p-bad"),
            ),
        ),
        LATER,
        "verified",
        [],
    ),
    (
        "an unreused photo beside a reused one",
        replace(
            BASE,
            photos=(*BASE.photos, make_photo(BASE.session, CL, reused_from="s-0", photo_id="a")),
        ),
        LATER,
        "verified",
        [],
    ),
    # ---- offline during the session: a warning above 600 s, inclusive of 600
    (
        "offline 600 s",
        replace(BASE, offline=(Interval(END - 20 * MIN, END - 10 * MIN),)),
        LATER,
        "verified",
        [],
    ),
    (
        "offline 601 s",
        replace(BASE, offline=(Interval(END - 20 * MIN - S, END - 10 * MIN),)),
        LATER,
        "verified",
        [C.CAMERA_OFFLINE],
    ),
    (
        "offline in two stretches, overlapping",
        replace(
            BASE,
            offline=(
                Interval(BASE.session.start, BASE.session.start + 6 * MIN),
                Interval(BASE.session.start + 5 * MIN, BASE.session.start + 11 * MIN),
            ),
        ),
        LATER,
        "verified",
        [C.CAMERA_OFFLINE],
    ),
    (
        "offline only after the session",
        replace(BASE, offline=(Interval(END),)),
        LATER,
        "verified",
        [],
    ),
    # ---- several at once: ReasonCode order, then window order
    (
        "many problems",
        replace(
            with_window(
                with_window(
                    with_photo(BASE, OP, where=north_of(ROOM_AT, 300)), 2, frozen=True, moved=True
                ),
                0,
                frozen=True,
            ),
            recorded_s=60.0,
            offline=(Interval(BASE.session.start, END),),
        ),
        LATER,
        "rejected",
        [
            C.SHORT_DURATION,
            C.VIDEO_FROZEN,
            C.VIDEO_FROZEN,
            C.PHOTO_OUT_OF_RANGE,
            C.CAMERA_OFFLINE,
            C.CAMERA_MOVED,
        ],
    ),
    (
        "hard beats pending",
        with_window(without_photo(BASE, CL), 0, black=True),
        END + MIN,
        "rejected",
        [C.VIDEO_BLACK, C.PHOTO_AWAITED],
    ),
]


def midnight_rows(zone: ZoneInfo) -> list:
    base = baseline(datetime(2024, 5, 6, 23, 30, tzinfo=zone))
    end = base.session.end
    name = str(zone)
    return [
        (f"{name}: across midnight", base, end + 3 * H, "verified", []),
        (
            f"{name}: running at 00:00",
            open_session(base),
            end - 30 * MIN,
            "pending",
            [C.SESSION_IN_PROGRESS],
        ),
        (
            f"{name}: closing photo 14 min after 01:00",
            with_photo(base, CL, shift=14 * MIN),
            end + 3 * H,
            "verified",
            [],
        ),
        (
            f"{name}: photo grace over at 03:00",
            without_photo(base, CL),
            end + PHOTO_GRACE,
            "rejected",
            [C.PHOTO_MISSING],
        ),
        (
            f"{name}: window after midnight awaited",
            with_window(base, 2, status=ClipStatus.MISSING),
            base.windows[2].window.end + GRACE - S,
            "pending",
            [C.CLIP_AWAITED],
        ),
        (
            f"{name}: short across midnight",
            replace(base, recorded_s=REQUIRED_S - 1),
            end + 3 * H,
            "rejected",
            [C.SHORT_DURATION],
        ),
    ]


def with_clips(
    evidence: SessionEvidence, index: int, *clips: ClipFacts, **changes
) -> SessionEvidence:
    """Window ``index`` offered exactly ``clips`` (``changes`` go to its WindowEvidence)."""
    windows = list(evidence.windows)
    windows[index] = replace(windows[index], clips=clips, **changes)
    return replace(evidence, windows=tuple(windows))


W1 = BASE.windows[1].facts
OWN = good_clip(W1)
NEIGHBOUR = replace(OWN, clip_id=99, device_id="dev-next-door", upload_id="u-99")

ROWS += [
    # ---- window proof, wired into the verdict (the rule itself: test_clip_proof.py)
    (
        "the camera says it cannot cut the window: said at once",
        with_clips(BASE, 1, cut_failed="not_recorded"),
        END + H,
        "rejected",
        [C.CLIP_NOT_RECORDED],
    ),
    (
        "own clip not decoded yet",
        with_clips(BASE, 1, replace(OWN, decoded=None)),
        LATER,
        "pending",
        [C.CLIP_AWAITED],
    ),
    (
        "own clip unreadable",
        with_clips(BASE, 1, replace(OWN, decoded=DecodedClip(error="invalid data"))),
        LATER,
        "rejected",
        [C.CLIP_UNREADABLE],
    ),
    (
        "own clip 2 s long for a 60 s window",
        with_clips(
            BASE,
            1,
            replace(
                OWN,
                cut_end=OWN.cut_start + 2 * S,
                duration_s=2.0,
                decoded=DecodedClip(frames=30, duration_s=2.0, frame_rate=15.0),
            ),
        ),
        LATER,
        "rejected",
        [C.CLIP_TOO_SHORT, C.CLIP_OUTSIDE_WINDOW],
    ),
    (
        "own clip cut months before the class",
        with_clips(
            BASE,
            1,
            replace(OWN, cut_start=OWN.cut_start - 90 * 24 * H, cut_end=OWN.cut_end - 90 * 24 * H),
        ),
        LATER,
        "rejected",
        [C.CLIP_OUTSIDE_WINDOW],
    ),
    (
        "own clip's frames do not fit its duration",
        with_clips(
            BASE, 1, replace(OWN, decoded=DecodedClip(frames=30, duration_s=60.0, frame_rate=15))
        ),
        LATER,
        "rejected",
        [C.CLIP_FRAMES_MISMATCH],
    ),
    (
        "own clip answers another command",
        with_clips(BASE, 1, replace(OWN, cmd_id="cut-s-1-0")),
        LATER,
        "rejected",
        [C.CLIP_WRONG_WINDOW],
    ),
    (
        "own clip's bytes already proved another window",
        with_clips(BASE, 1, replace(OWN, first_used_by="s-1#1")),
        LATER,
        "rejected",
        [C.CLIP_DUPLICATE],
    ),
    (
        "only the next classroom's camera answered, within the grace",
        with_clips(BASE, 1, NEIGHBOUR),
        REQUESTED + GRACE - S,
        "pending",
        [C.CLIP_AWAITED],
    ),
    (
        "only the next classroom's camera answered, past the grace",
        with_clips(BASE, 1, NEIGHBOUR),
        REQUESTED + GRACE,
        "rejected",
        [C.CLIP_WRONG_DEVICE],
    ),
    (
        "the next classroom's clip first, then the own camera's",
        with_clips(BASE, 1, NEIGHBOUR, replace(OWN, clip_id=100)),
        LATER,
        "verified",
        [],
    ),
    (
        "a failed clip of the own camera outranks nothing proven: a good one wins",
        with_clips(BASE, 1, replace(OWN, decoded=DecodedClip(error="x")), replace(OWN, clip_id=7)),
        LATER,
        "verified",
        [],
    ),
    (
        "own clip states an offset the camera never reported in the session",
        replace(
            with_clips(
                BASE,
                1,
                replace(
                    OWN,
                    cut_start=OWN.cut_start - 24 * H,
                    cut_end=OWN.cut_end - 24 * H,
                    clock_offset_s=-86400.0,
                ),
            ),
            session_clock_offsets=(0.0,),
        ),
        LATER,
        "rejected",
        [C.CLIP_CLOCK_MISMATCH],
    ),
    # ---- recorded time from what happened, and the camera's own word on it
    (
        "camera reports 20 min less than its start/stop/gap reports add up to",
        replace(BASE, reported_recorded_s=PRESET_S - 20 * 60),
        LATER,
        "rejected",
        [C.RECORDING_INCONSISTENT],
    ),
    (
        "camera's figure within the disagreement limit",
        replace(BASE, reported_recorded_s=PRESET_S - 119),
        LATER,
        "verified",
        [],
    ),
    (
        "camera's figure just beyond the disagreement limit",
        replace(BASE, reported_recorded_s=PRESET_S - 271),
        LATER,
        "rejected",
        [C.RECORDING_INCONSISTENT],
    ),
    # ---- a skewed clock is shown, not hidden
    (
        "camera clock 20 min fast",
        replace(BASE, device_clock_offset_s=1200.0),
        LATER,
        "verified",
        [C.DEVICE_CLOCK_SKEWED],
    ),
    (
        "camera clock 60 s fast is not worth a word",
        replace(BASE, device_clock_offset_s=60.0),
        LATER,
        "verified",
        [],
    ),
]

ROWS += midnight_rows(SHANGHAI) + midnight_rows(ZoneInfo("UTC"))
ROWS += photo_trust_rows(BASE, ROOM, LATER)


@pytest.mark.parametrize(
    ("evidence", "now", "state", "codes"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_judge(evidence, now, state, codes):
    verdict = judge(evidence, now)
    assert verdict.state == VerdictState(state)
    assert [r.code for r in verdict.reasons] == codes


def test_every_reason_code_is_produced_by_some_row():
    produced = {r.code for _, ev, now, _, _ in ROWS for r in judge(ev, now).reasons}
    assert produced == set(ReasonCode)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_reason_the_table_produces_renders(lang):
    for _, evidence, now, _, _ in ROWS:
        for reason in judge(evidence, now).reasons:
            text = render(reason, lang)
            assert text and "{" not in text


def test_reason_order_is_deterministic_under_shuffled_input():
    evidence = replace(
        with_window(with_window(BASE, 0, black=True), 2, black=True),
        photos=(
            make_photo(BASE.session, OP, where=None),
            make_photo(BASE.session, CL, where=None),
        ),
    )
    expected = judge(evidence, LATER)
    rng = random.Random(3)
    for _ in range(20):
        windows, photos = list(evidence.windows), list(evidence.photos)
        rng.shuffle(windows)
        rng.shuffle(photos)
        shuffled = replace(evidence, windows=tuple(windows), photos=tuple(photos))
        assert judge(shuffled, LATER) == expected
    numbers = [r.params["window_no"] for r in expected.reasons if r.code == C.VIDEO_BLACK]
    kinds = [r.params["kind"] for r in expected.reasons if r.code == C.PHOTO_LOCATION_MISSING]
    assert numbers == [1, 3] and kinds == ["opening", "closing"]


def test_params_never_read_as_within_the_limit():
    short = judge(replace(BASE, recorded_s=REQUIRED_S - 1), LATER).reasons[0]
    assert short.params["recorded_min"] == 84.9  # 84.98 min, rounded down
    assert render(short, "en") == (
        "Recorded 84.9 min of class, less than the required 90 min (tolerance 5 min)"
    )
    assert render(short) == "实际上课时长 84.9 分钟，少于规定的 90 分钟（允许误差 5 分钟）"
    far = judge(with_photo(BASE, OP, where=north_of(ROOM_AT, 100.2)), LATER).reasons[0]
    assert far.params["distance_m"] == 101  # rounded up
    assert "101 m" in render(far, "en") and "100 m" in render(far, "en")
    late = judge(with_photo(BASE, OP, shift=901 * S), LATER).reasons[0]
    assert late.params["delta_min"] == 15.1
    assert "15.1" in render(late, "zh-CN") and "15 分钟" in render(late, "zh-CN")


def test_window_times_render_in_local_time():
    evidence = with_window(baseline(datetime(2024, 5, 6, 23, 30, tzinfo=SHANGHAI)), 2, black=True)
    reason = judge(evidence, evidence.session.end + H).reasons[0]
    # 23:30 + 80 min local, stored in UTC.
    assert reason.params["window_start_at"] == "2024-05-06T16:50:00+00:00"
    assert "2024-05-07 00:50:00" in render(reason, "zh-CN")
    assert "2024-05-06 16:50:00" in render(reason, "en", tz=UTC)


def test_window_reasons_never_reveal_windows_not_yet_due():
    reason = judge(
        ROWS_BY_ID["window not due after an early close"][0], LAST_WINDOW_END - S
    ).reasons
    not_due = [r for r in reason if r.code == C.WINDOW_NOT_DUE]
    assert not_due and all(set(r.params) == {"window_no"} for r in not_due)


ROWS_BY_ID = {r[0]: r[1:] for r in ROWS}


def test_verdict_to_dict():
    verdict = judge(with_window(BASE, 2, moved=True), LATER)
    assert verdict.to_dict() == {
        "state": "verified",
        "reasons": [
            {
                "code": "camera_moved",
                "severity": "warning",
                "params": {
                    "window_no": 3,
                    "window_start_at": "2024-05-06T02:20:00+00:00",
                    "window_end_at": "2024-05-06T02:21:00+00:00",
                },
            }
        ],
    }
    assert isinstance(verdict, SessionVerdict)


def test_policy_is_a_parameter():
    evidence = with_window(BASE, 0, status=ClipStatus.MISSING)
    quick = VerdictPolicy(clip_grace_s=3600)
    assert judge(evidence, REQUESTED + H - S, quick).state == VerdictState.PENDING
    assert judge(evidence, REQUESTED + H, quick).state == VerdictState.REJECTED


def test_grace_counts_from_the_request_not_the_window_end():
    """Windows are asked for only after the class: a grace shorter than the class must not
    reject an honest class at its end, on its way to verified (the verdict would flap)."""
    short = VerdictPolicy(clip_grace_s=600)  # 10 min, the class lasts 90
    waiting = replace(BASE, windows=make_windows(BASE.session, ClipStatus.MISSING))
    asked = [replace(w, requested_at=END + MIN) for w in waiting.windows]
    for now in (END, END + 2 * MIN, END + 10 * MIN):
        verdict = judge(replace(waiting, windows=tuple(asked)), now, short)
        assert verdict.state == VerdictState.PENDING, now
    not_asked = [replace(w, requested_at=None) for w in waiting.windows]
    assert judge(replace(waiting, windows=tuple(not_asked)), END + 5 * H, short).state == (
        VerdictState.PENDING
    )
    assert judge(BASE, END + 2 * MIN, short).state == VerdictState.VERIFIED


# ---------------------------------------------------------------- recorded_seconds

T = datetime(2024, 5, 6, 15, 30, tzinfo=UTC)  # 23:30 in Shanghai


def ev(kind: str, at_s: float, end_s: float | None = None) -> RecordingEvent:
    end = None if end_s is None else T + timedelta(seconds=end_s)
    return RecordingEvent(RecordingEventKind(kind), T + timedelta(seconds=at_s), end)


@pytest.mark.parametrize(
    ("events", "until_s", "expected"),
    [
        ([], None, 0),
        ([ev("started", 0), ev("stopped", 3600)], None, 3600),
        ([ev("started", 0), ev("gap", 600, 900), ev("stopped", 3600)], None, 3300),
        ([ev("started", 0), ev("gap", -100, 100), ev("stopped", 3600)], None, 3500),  # gap half in
        ([ev("started", 0), ev("gap", 3500, 3700), ev("stopped", 3600)], None, 3500),
        ([ev("started", 0), ev("gap", 4000, 4100), ev("stopped", 3600)], None, 3600),  # outside
        (
            [ev("started", 0), ev("gap", 600, 900), ev("gap", 800, 1000), ev("stopped", 3600)],
            None,
            3200,
        ),  # overlapping gaps count once
        (
            [ev("started", 0), ev("started", 0), ev("stopped", 3600), ev("stopped", 3600)],
            None,
            3600,
        ),  # QoS 1 duplicates
        ([ev("stopped", 3600), ev("started", 0)], None, 3600),  # arrived out of order
        ([ev("started", 0)], None, 0),  # still open, no "until"
        ([ev("started", 0)], 1800, 1800),
        ([ev("started", 0), ev("gap", 600)], 1800, 600),  # open gap ends at "until"
        ([ev("started", 0), ev("gap", 600), ev("stopped", 3600)], None, 600),
        (
            [ev("started", 0), ev("stopped", 1000), ev("started", 2000), ev("stopped", 3000)],
            None,
            2000,
        ),  # closed and reopened
        ([ev("stopped", 100)], None, 0),
    ],
)
def test_recorded_seconds(events, until_s, expected):
    until = None if until_s is None else T + timedelta(seconds=until_s)
    assert recorded_seconds(events, until=until) == pytest.approx(expected)


def test_recorded_seconds_across_midnight_in_any_zone():
    start = datetime(2024, 5, 6, 23, 30, tzinfo=SHANGHAI)
    events = [
        RecordingEvent(RecordingEventKind.STARTED, start),
        RecordingEvent(RecordingEventKind.STOPPED, (start + H).astimezone(UTC)),
    ]
    assert recorded_seconds(events) == 3600


# ---------------------------------------------------------------- reasons and languages


def test_every_code_has_a_severity_and_both_languages():
    assert set(SEVERITY) == set(ReasonCode)
    assert set(TEMPLATES) == set(ReasonCode)
    for code, by_lang in TEMPLATES.items():
        assert set(by_lang) == set(LANGUAGES), code
        assert all(text.strip() for text in by_lang.values()), code
        # Both sentences quote the same facts.
        assert template_fields(by_lang["zh-CN"]) == template_fields(by_lang["en"]), code


def test_hard_codes_are_the_documented_ones():
    hard = {code for code, severity in SEVERITY.items() if severity == Severity.HARD}
    assert C.SHORT_DURATION in hard and C.CLIP_MISSING in hard and C.PHOTO_REUSED in hard
    assert SEVERITY[C.CAMERA_OFFLINE] == Severity.WARNING
    assert SEVERITY[C.CAMERA_MOVED] == Severity.WARNING
    assert SEVERITY[C.CLIP_OTHER_CLASSROOM] == Severity.HARD


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("en-US", "en"),
        ("en", "en"),
        ("EN-gb", "en"),
        ("zh", "zh-CN"),
        ("zh-TW", "zh-CN"),
        ("zh-Hans-CN", "zh-CN"),
        ("fr-FR,en;q=0.5", "en"),
        ("fr-FR,de;q=0.5", "zh-CN"),
        ("en;q=0.5,zh;q=0.6", "zh-CN"),
        ("zh;q=0.5,en;q=0.6", "en"),
        ("en;q=0.8,zh;q=0.8", "en"),  # a tie goes to the first named
        ("en;q=0", "zh-CN"),
        ("en;q=zero,zh;q=0.1", "zh-CN"),
        ("*", "zh-CN"),
        ("*;q=0.9,en;q=0.5", "zh-CN"),
        ("", "zh-CN"),
        (None, "zh-CN"),
        (" , ;q=1", "zh-CN"),
    ],
)
def test_pick_language(header, lang):
    assert pick_language(header) == lang


def test_render_takes_a_header_or_a_tag():
    reason = Reason(C.PHOTO_LOCATION_MISSING, {"kind": "closing"})
    assert render(reason) == "结课照片没有拍摄地点信息"
    assert render(reason, "en-US") == "The closing photo has no location"
    assert render(reason, "en-GB,en;q=0.9") == "The closing photo has no location"
    assert render(reason, "fr") == "结课照片没有拍摄地点信息"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (45.0, "45"),
        (44.96, "45"),
        (44.5, "44.5"),
        (0.04, "0"),
        (-0.04, "0"),
        (90, "90"),
        (1.25, "1.2"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_render_formats_by_parameter_name():
    reason = Reason(
        C.PHOTO_OUT_OF_RANGE, {"kind": "opening", "distance_m": 250.6, "radius_m": 100.0}
    )
    assert render(reason, "en") == (
        "The opening photo was taken 251 m from the classroom, beyond the 100 m limit"
    )
    assert render(reason, "zh-CN") == "开课照片的拍摄地点距教室 251 米，超出 100 米范围"
    offline = Reason(C.CAMERA_OFFLINE, {"offline_min": 12.0, "limit_min": 10.0})
    assert render(offline, "en") == (
        "The camera was offline for 12 min during the session, more than 10 min"
    )
