"""The replay's pure timeline rules: step order, when a verdict is final, how far the clock may
jump, what a lost segment costs a link."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from simulators.netlink import retransmission_delay
from simulators.plan import (
    Action,
    CameraPlan,
    DevicePlan,
    Expected,
    ForgerPlan,
    PhotoUpload,
    ReplayPlan,
    SessionPlan,
)
from simulators.replay_timeline import (
    Grace,
    fast_forward_target,
    in_class,
    is_settled,
    outcome_of,
    timeline_steps,
)

T0 = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
GRACE = Grace(photo_s=3600, clip_s=86400)
LEAD = timedelta(minutes=5)


def _session(sid: str, start_min: float, verdict: str = "verified") -> SessionPlan:
    start = T0 + timedelta(minutes=start_min)
    return SessionPlan(
        session_id=sid,
        classroom_id=f"room-{sid}",
        device_id=f"cam-{sid}",
        lecturer_id="lect",
        start=start,
        end=start + timedelta(minutes=45),
        behaviours=(),
        expected=Expected(verdict, frozenset()),  # type: ignore[arg-type]
    )


def _plan(*sessions: SessionPlan, actions: tuple[Action, ...] = (), forged: str = "") -> ReplayPlan:
    devices = tuple(
        DevicePlan(
            s.device_id,
            s.classroom_id,
            CameraPlan(scene_seed=1),
            forger=ForgerPlan("another_day") if s.session_id == forged else None,
        )
        for s in sessions
    )
    photo = PhotoUpload(sessions[0].start, sessions[0].session_id, "lect", "opening", b"jpeg")
    return ReplayPlan(
        name="t",
        clock_start=T0,
        speed=60,
        setup={},
        lecturer_tokens={},
        server_settings={},
        devices=devices,
        sessions=sessions,
        actions=actions,
        photos=(photo,),
    )


def test_steps_run_in_time_order_with_actions_first_at_the_same_time():
    a = _session("a", 10)
    link_up = Action(a.start, "link_up", device_id="cam-a")
    steps = timeline_steps(_plan(a, actions=(link_up,), forged="a"))
    assert [s.kind for s in steps] == ["action", "forger_start", "photo", "forger_stop"]
    assert steps[-1].at == a.end


def test_a_verdict_is_final_once_the_class_is_over_and_pending_only_past_its_deadline():
    s = _session("a", 0)
    assert not is_settled(s, "rejected", s.end - timedelta(seconds=1), GRACE)
    assert is_settled(s, "verified", s.end, GRACE)
    assert not is_settled(s, "pending", s.end + timedelta(days=30), GRACE)  # verified expected
    waiting = _session("b", 0, verdict="pending")
    assert not is_settled(waiting, "pending", GRACE.deadline(waiting) - timedelta(seconds=1), GRACE)
    assert is_settled(waiting, "pending", GRACE.deadline(waiting), GRACE)


def test_the_grace_comes_from_the_plans_server_settings_else_the_servers_defaults():
    assert Grace.from_settings({}) == Grace(3600.0, 86400.0)
    assert Grace.from_settings({"CLASSCAM_CLIP_GRACE_S": "600"}).clip_s == 600.0


def test_the_clock_jumps_to_the_next_step_or_just_before_the_next_class():
    a, b = _session("a", 0), _session("b", 300)
    link_up = Action(T0 + timedelta(hours=3), "link_up", device_id="cam-a")
    plan = _plan(a, b, actions=(link_up,))
    steps = timeline_steps(plan)
    after_a = a.end + timedelta(minutes=10)
    assert not in_class(plan, after_a, LEAD) and in_class(plan, b.start - LEAD, LEAD)

    def target(now: datetime, settled: set[str], due: datetime | None = None) -> datetime | None:
        return fast_forward_target(
            plan, steps, now, grace=GRACE, lead=LEAD, settled=settled, outbox_due=due
        )

    assert target(after_a, set()) == link_up.at
    assert target(link_up.at, set()) == b.start - LEAD
    # An upload an agent scheduled comes first: nothing may be jumped over.
    assert target(after_a, set(), due=after_a + timedelta(minutes=7)) == after_a + timedelta(
        minutes=7
    )
    # After the last class: to a minute past the deadline of a verdict still open, else nowhere.
    last = b.end + timedelta(minutes=10)
    assert target(last, {"a"}) == GRACE.deadline(b) + timedelta(seconds=60)
    assert target(last, {"a", "b"}) is None


def test_an_outcome_matches_on_the_verdict_and_the_reason_codes():
    s = _session("a", 0, verdict="rejected")
    view = {
        "verdict": {"state": "rejected", "reasons": [{"code": "video_black"}]},
        "windows": [{"clip": {"upload_id": "u"}}, {"clip": None}],
        "photos": [{}, {}],
    }
    wrong = outcome_of(s, view)
    assert (wrong.verdict, wrong.reasons, wrong.clips, wrong.photos) == (
        "rejected",
        frozenset({"video_black"}),
        1,
        2,
    )
    assert not wrong.match  # nothing was expected but the verdict
    assert outcome_of(s, None).verdict == "unanswered"


def test_a_lost_segment_costs_one_retransmission_timeout():
    rng = random.Random(1)
    assert retransmission_delay(100_000, 0.0, 0.1, rng) == 0.0
    every = retransmission_delay(14_600, 100.0, 0.1, rng)  # 10 segments, all lost
    assert abs(every - 10 * 0.4) < 1e-9
    some = [retransmission_delay(146_000, 2.0, 0.0, random.Random(seed)) for seed in range(50)]
    lost_per_100 = sum(some) / len(some) / 0.2  # each lost segment waits 0.2 s
    assert 1.0 < lost_per_100 < 3.0
