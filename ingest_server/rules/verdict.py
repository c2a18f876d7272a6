"""A session's verdict from its evidence (DESIGN.md §1.8): a pure function of plain data.

``judge(evidence, now)`` gives ``verified``, ``pending`` or ``rejected`` with reasons. Every
reason code has a severity (``reasons.SEVERITY``):

* hard — the evidence shows the class did not happen as claimed, or evidence that should have
  arrived by now did not: ``short_duration``, ``recording_unreported``,
  ``recording_inconsistent``, ``clip_missing``, ``clip_not_recorded``, every reason of the
  window-proof rule (``rules.clip_proof``: ``clip_wrong_device``, ``clip_outside_window``,
  ``clip_too_short``, ``clip_unreadable``, ``clip_frames_mismatch``, ``clip_duplicate``…),
  ``video_black``, ``video_frozen``, ``clip_other_classroom`` (the picture is another
  classroom's view: ``rules.clip_picture``), every ``photo_*`` problem;
* warning — worth a person's look, but no proof of anything: ``camera_offline`` (the device
  records without 4G and uploads later, so an outage alone proves nothing), ``camera_moved``
  (the picture matches no classroom's view; a nudged camera still filmed) and
  ``device_clock_skewed`` (times were converted; the skew is shown, not hidden);
* pending — evidence still awaited: the session running, windows not drawn or not passed,
  clips on their way, photos within their grace, the recording report not yet in.

Any hard reason → ``rejected``; else any pending → ``pending``; else ``verified`` (warnings
are listed all the same). Reasons come in ``ReasonCode`` order, then in window/photo order.

While a session runs, nothing about its windows is said: listing which windows have passed
would tell the classroom when it is no longer watched.

The verdict is recomputed whenever evidence or time moves on. It does not flap: evidence that
may still arrive keeps the session ``pending`` (a clip's grace counts from when it was asked
for, the camera's offline time excluded; another camera's clip rejects nothing while the right
one may still come), and ``rejected`` is said once evidence is overdue or a hard rule fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from common.clock import to_utc
from ingest_server.rules.clip_picture import picture_reasons
from ingest_server.rules.clip_proof import (
    ClipFacts,
    ProofOutcome,
    ProofPolicy,
    WindowFacts,
    best_proof,
)
from ingest_server.rules.photo_match import (
    DoubleBooking,
)
from ingest_server.rules.photo_reasons import PhotoEvidence, photo_reasons
from ingest_server.rules.reasons import Reason, ReasonCode, Severity, ceil1, floor1, iso_utc
from ingest_server.rules.session import SessionFacts
from ingest_server.rules.windows import Window

DAY_S = 24 * 3600.0


class VerdictState(StrEnum):
    VERIFIED = "verified"
    PENDING = "pending"
    REJECTED = "rejected"


class RecordingEventKind(StrEnum):
    STARTED = "started"
    STOPPED = "stopped"
    GAP = "gap"


@dataclass(frozen=True, slots=True)
class Interval:
    """``[start, end)``; ``end`` is ``None`` while it lasts (it then ends at "now")."""

    start: datetime
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecordingEvent:
    """A device report about the session's recording, in server time.

    ``started``/``stopped`` at ``at``; a ``gap`` from ``at`` to ``end`` (``None``: still open).
    """

    kind: RecordingEventKind
    at: datetime
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class WindowEvidence:
    """A drawn window and what came of it.

    ``clips``: every stored clip whose signed manifest names this window's command, from any
    device (the proof rule says which, if any, proves it). ``requested_at``: when the server
    first asked for it (``None``: not yet). ``cut_failed``: the camera's word that it cannot
    cut the window (no recording of it), with its detail.
    """

    facts: WindowFacts
    clips: tuple[ClipFacts, ...] = ()
    requested_at: datetime | None = None
    cut_failed: str | None = None

    @property
    def window(self) -> Window:
        return self.facts.window


@dataclass(frozen=True, slots=True)
class SessionEvidence:
    """Everything known about a session, as plain data.

    ``recorded_s`` is ``None`` until the device has reported the session started and stopped
    (see ``recorded_seconds``); ``reported_recorded_s`` is what the camera itself said it
    recorded, ``device_clock_offset_s`` its clock's offset (camera minus server) when it
    opened the session. ``offline`` lists the device's offline intervals from the session's
    start up to now.
    """

    session: SessionFacts
    recorded_s: float | None = None
    reported_recorded_s: float | None = None
    device_clock_offset_s: float | None = None
    # Every clock offset the camera stated in its reports of the session (rules.clip_proof).
    session_clock_offsets: tuple[float, ...] = ()
    windows: tuple[WindowEvidence, ...] = ()
    photos: tuple[PhotoEvidence, ...] = ()
    # Where the lecturer was at once in another classroom (rules.photo_match.double_bookings).
    double_bookings: tuple[DoubleBooking, ...] = ()
    offline: tuple[Interval, ...] = ()
    duration_tolerance_s: float = 300.0


@dataclass(frozen=True, slots=True)
class VerdictPolicy:
    """Grace periods and limits of ``judge``.

    A clip is missing once the device has been online for ``clip_grace_s`` since the server
    first asked for it (windows are asked for only after the class, so counting from the
    window's end would reject honest classes on their way to being verified), or
    ``clip_deadline_s`` after the session's end regardless (the spool keeps a session about a
    week; past that it cannot come). The recording report likewise, counted from the end. A
    photo is missing ``photo_grace_s`` after the session's end. All are inclusive: at exactly
    the grace, the evidence is missing. The camera's own recorded seconds may differ from the
    server's sum of its reports by ``recording_disagreement_s`` (or that share of the preset
    duration, whichever is more); a clock offset beyond ``skew_warning_s`` is shown.
    """

    clip_grace_s: float = DAY_S
    clip_deadline_s: float = 7 * DAY_S
    photo_grace_s: float = 2 * 3600.0
    offline_limit_s: float = 600.0
    recording_disagreement_s: float = 120.0
    recording_disagreement_share: float = 0.05
    skew_warning_s: float = 60.0
    proof: ProofPolicy = field(default_factory=ProofPolicy)


@dataclass(frozen=True)
class SessionVerdict:
    """The state of a session and why."""

    state: VerdictState
    reasons: list[Reason] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form, for the event feed and the API."""
        return {"state": str(self.state), "reasons": [r.to_dict() for r in self.reasons]}


def _merged(intervals: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _overlap_s(intervals: Iterable[tuple[datetime, datetime]], lo: datetime, hi: datetime) -> float:
    """Seconds of ``[lo, hi)`` covered by the union of ``intervals``."""
    total = 0.0
    for start, end in _merged(intervals):
        total += max(0.0, (min(end, hi) - max(start, lo)).total_seconds())
    return total


def recorded_seconds(events: Iterable[RecordingEvent], *, until: datetime | None = None) -> float:
    """Seconds actually recorded: started→stopped spans minus the gaps inside them.

    Duplicates (QoS 1 redelivery) are harmless: a second ``started`` while recording and a
    ``stopped`` while not are ignored. A span still open counts up to ``until`` when given,
    else not at all; an open gap likewise ends at ``until`` (or at the last span's end).
    """
    spans: list[tuple[datetime, datetime]] = []
    gaps: list[tuple[datetime, datetime | None]] = []
    opened: datetime | None = None
    for event in sorted(events, key=lambda e: to_utc(e.at)):
        at = to_utc(event.at)
        if event.kind == RecordingEventKind.GAP:
            gaps.append((at, to_utc(event.end) if event.end else None))
        elif event.kind == RecordingEventKind.STARTED and opened is None:
            opened = at
        elif event.kind == RecordingEventKind.STOPPED and opened is not None:
            spans.append((opened, at))
            opened = None
    if opened is not None and until is not None:
        spans.append((opened, max(opened, to_utc(until))))
    spans = _merged(spans)
    if not spans:
        return 0.0
    horizon = spans[-1][1]
    closed_gaps = [(start, end or horizon) for start, end in gaps]
    recorded = sum((end - start).total_seconds() for start, end in spans)
    cut = sum(_overlap_s(closed_gaps, start, end) for start, end in spans)
    return max(0.0, recorded - cut)


def _offline_pairs(evidence: SessionEvidence, now: datetime) -> list[tuple[datetime, datetime]]:
    return [(to_utc(i.start), min(to_utc(i.end), now) if i.end else now) for i in evidence.offline]


def online_seconds(evidence: SessionEvidence, since: datetime, now: datetime) -> float:
    """Seconds the device was online between ``since`` and ``now``."""
    if now <= since:
        return 0.0
    offline = _overlap_s(_offline_pairs(evidence, now), since, now)
    return (now - since).total_seconds() - offline


def _window_params(number: int, window: Window) -> dict[str, str | int | float]:
    return {
        "window_no": number,
        "window_start_at": iso_utc(window.start),
        "window_end_at": iso_utc(window.end),
    }


def _overdue(
    evidence: SessionEvidence, since: datetime | None, now: datetime, policy: VerdictPolicy
) -> bool:
    """Online for the grace since ``since``, or past the deadline after the session's end."""
    if (now - evidence.session.end).total_seconds() >= policy.clip_deadline_s:
        return True
    if since is None:
        return False
    return online_seconds(evidence, to_utc(since), now) >= policy.clip_grace_s


def _duration_reasons(
    evidence: SessionEvidence, now: datetime, policy: VerdictPolicy
) -> list[Reason]:
    session = evidence.session
    if evidence.recorded_s is None:
        if _overdue(evidence, session.end, now, policy):
            return [Reason(ReasonCode.RECORDING_UNREPORTED, {"end_at": iso_utc(session.end)})]
        return [Reason(ReasonCode.AWAITING_RECORDING_REPORT)]
    reasons = []
    reported = evidence.reported_recorded_s
    if reported is not None:
        limit = max(
            policy.recording_disagreement_s,
            policy.recording_disagreement_share * session.preset_duration_s,
        )
        if abs(reported - evidence.recorded_s) > limit:
            params = {
                "computed_min": floor1(evidence.recorded_s / 60),
                "reported_min": floor1(reported / 60),
                "limit_min": limit / 60,
            }
            reasons.append(Reason(ReasonCode.RECORDING_INCONSISTENT, params))
    required = session.preset_duration_s - evidence.duration_tolerance_s
    if evidence.recorded_s < required:
        params = {
            "recorded_min": floor1(evidence.recorded_s / 60),
            "preset_min": session.preset_duration_s / 60,
            "tolerance_min": evidence.duration_tolerance_s / 60,
        }
        reasons.append(Reason(ReasonCode.SHORT_DURATION, params))
    return reasons


def _window_reason(
    evidence: SessionEvidence, item: WindowEvidence, now: datetime, policy: VerdictPolicy
) -> list[Reason]:
    """What one window's evidence says: proven (with what its video shows), failed, awaited
    or missing. Another camera's clip neither proves a window nor, while the right one may
    still come, rejects it."""
    window = item.window
    params = _window_params(item.facts.number, window)
    installed = evidence.session.device_id
    proof = best_proof(
        item.facts, item.clips, installed, policy.proof, evidence.session_clock_offsets
    )
    if proof is not None and proof.outcome is ProofOutcome.PROVEN:
        decoded = proof.clip.decoded
        assert decoded is not None  # proven clips were decoded
        return picture_reasons(decoded, params)
    own = proof is not None and proof.clip.device_id == installed
    if proof is not None and own and proof.outcome is ProofOutcome.FAILED:
        return list(proof.reasons)
    if proof is not None and own:
        return [Reason(ReasonCode.CLIP_AWAITED, {**params, "status": "checking"})]
    if item.cut_failed is not None:
        return [Reason(ReasonCode.CLIP_NOT_RECORDED, {**params, "detail": item.cut_failed})]
    if _overdue(evidence, item.requested_at, now, policy):
        if proof is not None:  # only other cameras' clips came
            return list(proof.reasons)
        since = item.requested_at or evidence.session.end
        waited_h = floor1((now - to_utc(since)).total_seconds() / 3600)
        return [Reason(ReasonCode.CLIP_MISSING, {**params, "waited_h": waited_h})]
    status = "requested" if item.requested_at is not None else "not_requested"
    return [Reason(ReasonCode.CLIP_AWAITED, {**params, "status": status})]


def _window_reasons(
    evidence: SessionEvidence, now: datetime, policy: VerdictPolicy
) -> list[Reason]:
    if not evidence.windows:
        return [Reason(ReasonCode.WINDOWS_NOT_DRAWN)]
    reasons = []
    for item in sorted(evidence.windows, key=lambda w: w.facts.number):
        if to_utc(item.window.end) > now:
            reasons.append(Reason(ReasonCode.WINDOW_NOT_DUE, {"window_no": item.facts.number}))
        else:
            reasons += _window_reason(evidence, item, now, policy)
    return reasons


def _skew_reasons(evidence: SessionEvidence, policy: VerdictPolicy) -> list[Reason]:
    offset = evidence.device_clock_offset_s
    if offset is None or abs(offset) <= policy.skew_warning_s:
        return []
    return [Reason(ReasonCode.DEVICE_CLOCK_SKEWED, {"clock_offset_s": round(offset, 1)})]


def _offline_reasons(
    evidence: SessionEvidence, now: datetime, policy: VerdictPolicy
) -> list[Reason]:
    session = evidence.session
    offline = _overlap_s(_offline_pairs(evidence, now), session.start, min(session.end, now))
    if offline > policy.offline_limit_s:
        params = {"offline_min": ceil1(offline / 60), "limit_min": policy.offline_limit_s / 60}
        return [Reason(ReasonCode.CAMERA_OFFLINE, params)]
    return []


def judge(
    evidence: SessionEvidence, now: datetime, policy: VerdictPolicy | None = None
) -> SessionVerdict:
    """The verdict on ``evidence`` at ``now`` (see the module docstring for the rules)."""
    policy = policy or VerdictPolicy()
    now = to_utc(now)
    session = evidence.session
    reasons: list[Reason] = []
    if session.closed_at is None and now < session.scheduled_end:
        reasons.append(
            Reason(ReasonCode.SESSION_IN_PROGRESS, {"end_at": iso_utc(session.scheduled_end)})
        )
    else:
        reasons += _duration_reasons(evidence, now, policy)
        reasons += _window_reasons(evidence, now, policy)
        reasons += _skew_reasons(evidence, policy)
    reasons += photo_reasons(
        session, evidence.photos, evidence.double_bookings, now, policy.photo_grace_s
    )
    reasons += _offline_reasons(evidence, now, policy)

    order = {code: index for index, code in enumerate(ReasonCode)}
    reasons.sort(key=lambda r: order[r.code])  # stable: window/photo order within a code
    severities = {r.severity for r in reasons}
    if Severity.HARD in severities:
        state = VerdictState.REJECTED
    elif Severity.PENDING in severities:
        state = VerdictState.PENDING
    else:
        state = VerdictState.VERIFIED
    return SessionVerdict(state, reasons)
