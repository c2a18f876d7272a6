"""The replay's pure timeline rules: step order, when a verdict is final, how far the clock may
jump, what a lost segment costs a link."""

from __future__ import annotations

import random
from dataclasses import replace
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
    Step,
    failed_step_sessions,
    fast_forward_target,
    in_class,
    is_settled,
    outcome_of,
    step_failure,
    steps_left_for,
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


def _view(state: str, *codes: str) -> dict[str, object]:
    return {"verdict": {"state": state, "reasons": [{"code": c} for c in codes]}}


def test_a_verdict_is_final_once_the_class_is_over_and_pending_only_past_its_deadline():
    s = _session("a", 0)

    def settled(view: dict[str, object], at: datetime, session: SessionPlan = s) -> bool:
        return is_settled(session, view, at, GRACE, steps_left=False)

    assert not settled(_view("rejected", "video_black"), s.end - timedelta(seconds=1))
    assert settled(_view("verified"), s.end)
    assert not settled(_view("pending", "clip_awaited"), s.end + timedelta(days=30))
    waiting = _session("b", 0, verdict="pending")
    before = GRACE.deadline(waiting) - timedelta(seconds=1)
    assert not settled(_view("pending", "clip_awaited"), before, waiting)
    assert settled(_view("pending", "clip_awaited"), GRACE.deadline(waiting), waiting)


def test_a_rejection_is_not_final_while_clips_are_awaited_or_steps_are_left():
    """The server lists clip_awaited beside a hard reason while the clips are on their way, and
    a link coming back the next morning may still bring them: neither is the last word."""
    s = _session("a", 0, verdict="rejected")
    after = s.end + timedelta(seconds=1)
    awaited = _view("rejected", "photo_out_of_range", "camera_offline", "clip_awaited")
    assert not is_settled(s, awaited, after, GRACE, steps_left=False)
    final = _view("rejected", "photo_out_of_range", "camera_offline")
    assert is_settled(s, final, after, GRACE, steps_left=False)
    assert not is_settled(s, final, after, GRACE, steps_left=True)
    assert not is_settled(s, None, after, GRACE, steps_left=False)


def test_steps_left_for_a_session_are_its_own_and_its_devices():
    a, b = _session("a", 0), _session("b", 60)
    link_up = Step(
        a.end + timedelta(hours=20),
        "action",
        action=Action(a.end + timedelta(hours=20), "link_up", device_id="cam-a"),
    )
    photo = Step(b.end, "photo", photo=PhotoUpload(b.end, "b", "lect", "closing", b"jpeg"))
    assert steps_left_for(a, [link_up]) and not steps_left_for(b, [link_up])
    assert steps_left_for(b, [photo]) and not steps_left_for(a, [photo])
    assert not steps_left_for(a, [])


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
    # Just over: the camera's own timer closes the class a moment after the clock passed it.
    assert in_class(plan, a.end + LEAD / 2, LEAD) and not in_class(plan, a.end + 2 * LEAD, LEAD)

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


def test_a_failed_step_makes_its_session_a_mismatch_whatever_the_server_says():
    """closing_photo_missing expects photo_missing; an opening upload that failed gives
    photo_missing too, so the reason codes alone would read as a match."""
    s = _session("a", 0, verdict="rejected")
    s = replace(s, expected=Expected("rejected", frozenset({"photo_missing"})))
    view = _view("rejected", "photo_missing", "photo_missing")
    assert outcome_of(s, view).match
    upload = Step(s.start, "photo", photo=PhotoUpload(s.start, "a", "lect", "opening", b"jpeg"))
    note = step_failure(upload, "500")
    assert note == "photo opening upload failed: 500"
    failed = outcome_of(s, view, [note])
    assert not failed.match and failed.to_json()["failures"] == [note]
    assert not outcome_of(s, None, [note]).match


def test_a_failed_step_spoils_its_own_session_else_every_session_of_its_device():
    a, b, c = _session("a", 0), _session("b", 60), _session("c", 0)
    b = replace(b, device_id="cam-a")  # the same camera, later in the day
    plan = _plan(a, b, c)
    close = Step(a.end, "action", action=Action(a.end, "close_session", session_id="a"))
    link = Step(a.end, "action", action=Action(a.end, "link_down", device_id="cam-a"))
    assert failed_step_sessions(plan, close) == ("a",)
    assert failed_step_sessions(plan, link) == ("a", "b")
    assert step_failure(close, "409 closed") == "close_session a failed: 409 closed"


def test_a_lost_segment_costs_one_retransmission_timeout():
    rng = random.Random(1)
    assert retransmission_delay(100_000, 0.0, 0.1, rng) == 0.0
    every = retransmission_delay(14_600, 100.0, 0.1, rng)  # 10 segments, all lost
    assert abs(every - 10 * 0.4) < 1e-9
    some = [retransmission_delay(146_000, 2.0, 0.0, random.Random(seed)) for seed in range(50)]
    lost_per_100 = sum(some) / len(some) / 0.2  # each lost segment waits 0.2 s
    assert 1.0 < lost_per_100 < 3.0
