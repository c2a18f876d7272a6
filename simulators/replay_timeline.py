"""The pure rules of a replay's timeline: what is due when, when the clock may jump ahead,
when a session's verdict is final, and whether it is the one the scenario expects.

Everything here is plain data in, plain data out (``replay_run`` acts on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from ingest_server.rules.reasons import SEVERITY, Severity
from simulators.plan import Action, PhotoUpload, ReplayPlan, SessionPlan

StepKind = Literal["action", "photo", "forger_start", "forger_stop"]
# A session's verdict is read from the server as one of these (or "unanswered").
FINAL_STATES = ("verified", "rejected")


@dataclass(frozen=True, slots=True)
class Step:
    """Something the replay does at ``at`` (simulated time)."""

    at: datetime
    kind: StepKind
    action: Action | None = None
    photo: PhotoUpload | None = None
    session: SessionPlan | None = None


def timeline_steps(plan: ReplayPlan) -> list[Step]:
    """Every action, photo upload and forged session report of ``plan``, in time order (at the
    same time: actions first, so a link is up before a photo or report uses it)."""
    forged = {d.device_id for d in plan.devices if d.forger is not None}
    steps = [Step(a.at, "action", action=a) for a in plan.actions]
    steps += [Step(p.at, "photo", photo=p) for p in plan.photos]
    for s in plan.sessions:
        if s.device_id in forged:
            steps += [
                Step(s.start, "forger_start", session=s),
                Step(s.end, "forger_stop", session=s),
            ]
    order = {"action": 0, "forger_start": 1, "photo": 2, "forger_stop": 3}
    return sorted(steps, key=lambda step: (step.at, order[step.kind]))


def step_sessions(step: Step) -> tuple[str, ...]:
    """The session a step belongs to, if it names one (photos, opening and closing, forged
    reports); a step on a device alone (link, power) names none."""
    if step.photo is not None:
        return (step.photo.session_id,)
    if step.action is not None and step.action.session_id:
        return (step.action.session_id,)
    if step.session is not None:
        return (step.session.session_id,)
    return ()


def _device_of(step: Step) -> str | None:
    if step.action is not None:
        return step.action.device_id
    return step.session.device_id if step.session is not None else None


def failed_step_sessions(plan: ReplayPlan, step: Step) -> tuple[str, ...]:
    """The sessions a failed step spoils: its own, else every session of its device."""
    own = step_sessions(step)
    if own:
        return own
    device = _device_of(step)
    return tuple(s.session_id for s in plan.sessions if s.device_id == device)


def step_failure(step: Step, what: str) -> str:
    """How a failed step reads in the table and the report, e.g. ``photo opening upload
    failed: 500``."""
    if step.photo is not None:
        return f"photo {step.photo.kind} upload failed: {what}"
    if step.action is not None:
        target = step.action.session_id or step.action.device_id or "?"
        return f"{step.action.kind} {target} failed: {what}"
    return f"{step.kind} failed: {what}"


@dataclass(frozen=True, slots=True)
class Grace:
    """How long after a session's end the server waits for photos and clips (simulated s)."""

    photo_s: float
    clip_s: float

    @classmethod
    def from_settings(cls, server_settings: dict[str, str]) -> Grace:
        from ingest_server.settings import Settings

        fields = Settings.model_fields

        def value(name: str) -> float:
            raw = server_settings.get(f"CLASSCAM_{name.upper()}")
            return float(raw) if raw is not None else float(fields[name].default)

        return cls(value("photo_grace_s"), value("clip_grace_s"))

    def deadline(self, session: SessionPlan) -> datetime:
        """When no more evidence can change ``session``'s verdict: a pending verdict is then
        the server's last word."""
        return session.end + timedelta(seconds=max(self.photo_s, self.clip_s))


def pending_reasons(view: dict[str, Any] | None) -> frozenset[str]:
    """The reasons in the server's view that say evidence is still awaited (pending severity,
    e.g. ``clip_awaited``): while one is listed the verdict may still change."""
    reasons = ((view or {}).get("verdict") or {}).get("reasons", [])
    pending = {str(c) for c, severity in SEVERITY.items() if severity is Severity.PENDING}
    return frozenset(str(r["code"]) for r in reasons if str(r["code"]) in pending)


def steps_left_for(session: SessionPlan, remaining: Sequence[Step]) -> bool:
    """Whether a step not yet run concerns ``session`` or its device (a link coming back the
    next morning, a late photo): until it has run, the verdict is not the last word."""
    return any(
        session.session_id in step_sessions(step) or _device_of(step) == session.device_id
        for step in remaining
    )


def is_settled(
    session: SessionPlan,
    view: dict[str, Any] | None,
    now: datetime,
    grace: Grace,
    *,
    steps_left: bool,
) -> bool:
    """Whether ``session``'s verdict in the server's ``view`` read at ``now`` is final: the class
    is over, every step of the session and its device has run, and the verdict is verified or
    rejected with no pending reason left (the server lists ``clip_awaited`` beside a hard reason
    while clips are on their way); pending only when pending is expected and the deadline passed.

    That deadline is the replay's, not the server's: the server counts the clip grace in online
    seconds from each request, up to ``clip_deadline_s`` (docs/scenarios.md, "pending")."""
    if now < session.end or steps_left:
        return False
    state = str(((view or {}).get("verdict") or {}).get("state", "unanswered"))
    if state in FINAL_STATES:
        return not pending_reasons(view)
    return (
        state == "pending"
        and session.expected.verdict == "pending"
        and now >= grace.deadline(session)
    )


def in_class(plan: ReplayPlan, now: datetime, lead: timedelta) -> bool:
    """Whether a session is about to start (within ``lead``), running, or just over (within
    ``lead`` of its end): no jumping then. Just over too, because the camera closes the class
    at its planned end by its own timer, a moment after the clock passed it: a jump in that
    moment made the camera close it hours late (a closing photo then read as taken far from
    the close)."""
    return any(s.start - lead <= now <= s.end + lead for s in plan.sessions)


def fast_forward_target(
    plan: ReplayPlan,
    steps: list[Step],
    now: datetime,
    *,
    grace: Grace,
    lead: timedelta,
    settled: set[str],
    outbox_due: datetime | None,
) -> datetime | None:
    """How far the clock may jump from ``now`` when everything is quiet: up to the next step,
    ``lead`` before the next session starts, a little past the next unsettled verdict's
    deadline, or the next upload an agent has scheduled, whichever comes first. None when
    nothing is left to wait for."""
    candidates = [s.at for s in steps if s.at > now]
    candidates += [s.start - lead for s in plan.sessions if s.start - lead > now]
    candidates += [
        grace.deadline(s) + timedelta(seconds=60)
        for s in plan.sessions
        if s.session_id not in settled and grace.deadline(s) > now
    ]
    if outbox_due is not None and outbox_due > now:
        candidates.append(outbox_due)
    return min(candidates) if candidates else None


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    """A session's expected and actual verdict and reasons."""

    session: SessionPlan
    verdict: str
    reasons: frozenset[str]
    clips: int = 0  # windows proven by a stored clip, as the server shows them
    photos: int = 0
    # What went wrong in the replay itself (a photo upload refused, an agent that died): the
    # verdict was not reached the way the scenario says, so it cannot count as a match.
    failures: tuple[str, ...] = ()

    @property
    def match(self) -> bool:
        return not self.failures and self.session.expected.matches(self.verdict, self.reasons)

    def to_json(self) -> dict[str, Any]:
        expected = self.session.expected
        return {
            "session_id": self.session.session_id,
            "device_id": self.session.device_id,
            "behaviours": list(self.session.behaviours),
            "expected": {
                "verdict": expected.verdict,
                "reasons": sorted(expected.reasons),
                "may_also": sorted(expected.may_also),
            },
            "actual": {"verdict": self.verdict, "reasons": sorted(self.reasons)},
            "match": self.match,
            "failures": list(self.failures),
            "clips": self.clips,
            "photos": self.photos,
        }


def outcome_of(
    session: SessionPlan, view: dict[str, Any] | None, failures: Sequence[str] = ()
) -> SessionOutcome:
    """The outcome from the server's view of the session (``GET /sessions/{id}``) and what
    failed in the replay on its way (``failures``: any one makes it a mismatch)."""
    if view is None:
        return SessionOutcome(session, "unanswered", frozenset(), failures=tuple(failures))
    verdict = view.get("verdict") or {}
    codes = frozenset(str(r["code"]) for r in verdict.get("reasons", []))
    clips = sum(1 for w in view.get("windows", []) if w.get("clip"))
    state = str(verdict.get("state", "unanswered"))
    photos = len(view.get("photos", []))
    return SessionOutcome(session, state, codes, clips, photos, tuple(failures))
