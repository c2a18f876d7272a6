"""The pure rules of a replay's timeline: what is due when, when the clock may jump ahead,
when a session's verdict is final, and whether it is the one the scenario expects.

Everything here is plain data in, plain data out (``replay_run`` acts on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

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


def is_settled(session: SessionPlan, state: str, now: datetime, grace: Grace) -> bool:
    """Whether ``session``'s verdict ``state`` read at ``now`` is final: verified or rejected
    once the class is over, pending only when pending is expected and the deadline passed."""
    if now < session.end:
        return False
    if state in FINAL_STATES:
        return True
    return (
        state == "pending"
        and session.expected.verdict == "pending"
        and now >= grace.deadline(session)
    )


def in_class(plan: ReplayPlan, now: datetime, lead: timedelta) -> bool:
    """Whether a session is about to start (within ``lead``) or running: no jumping then."""
    return any(s.start - lead <= now <= s.end for s in plan.sessions)


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

    @property
    def match(self) -> bool:
        return self.session.expected.matches(self.verdict, self.reasons)

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
            "clips": self.clips,
            "photos": self.photos,
        }


def outcome_of(session: SessionPlan, view: dict[str, Any] | None) -> SessionOutcome:
    """The outcome from the server's view of the session (``GET /sessions/{id}``)."""
    if view is None:
        return SessionOutcome(session, "unanswered", frozenset())
    verdict = view.get("verdict") or {}
    codes = frozenset(str(r["code"]) for r in verdict.get("reasons", []))
    clips = sum(1 for w in view.get("windows", []) if w.get("clip"))
    state = str(verdict.get("state", "unanswered"))
    return SessionOutcome(session, state, codes, clips, len(view.get("photos", [])))
