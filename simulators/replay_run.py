"""Carry out a ``ReplayPlan`` on real parts: the timeline of actions, photo uploads and forged
reports at their simulated times, time management, and the end (every verdict final).

Time management. While a class is about to start or running, the shared clock runs at the
replay's speed. When nothing is due for a while and everything is quiet (no feed event and
next to no traffic for a few real seconds, no upload waiting on a link that is up), the clock
*jumps* to the next thing due: a step, a little before the next class, a verdict deadline, or
the next upload an agent scheduled. A jump rather than a higher speed, because the agents'
heartbeats and MQTT keepalives wait in real seconds: at thousands of simulated seconds per
real one every device would look offline all the time, whereas after a jump the server sees
one gap, stamped from the last heartbeat before it to the first after it, which never overlaps
a class (jumps stop ``lead`` before each one), so no verdict can be changed by it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from simulators.plan import LinkShape, ReplayPlan, SessionPlan
from simulators.replay_forgery import report_session
from simulators.replay_stack import DeviceRig, ReplayStack
from simulators.replay_timeline import (
    Grace,
    SessionOutcome,
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
from simulators.replay_view import DeviceLine, LiveStatus, ReplayReport, SessionLine

log = logging.getLogger(__name__)

TICK_REAL_S = 0.1
POLL_REAL_S = 1.0
QUIET_REAL_S = 3.0  # no feed event and next to no traffic this long: quiet
QUIET_BYTES_PER_S = 4096  # per device: heartbeats and pings, not chunks (64 KiB each)
LEAD_REAL_S = 5.0  # the clock runs at speed this long (real) before each class
MIN_JUMP_REAL_S = 10.0  # a jump shorter than this many real seconds at speed is not worth it


def shape_text(shape: LinkShape) -> str:
    rate = f"{shape.rate_kbit:g} kbit/s" if shape.rate_kbit else "unlimited"
    extra = []
    if shape.loss_pct:
        extra.append(f"{shape.loss_pct:g}% loss")
    if shape.latency_ms:
        extra.append(f"{shape.latency_ms:g} ms")
    return ", ".join([rate, *extra])


@dataclass
class Activity:
    """What the replay last saw moving: feed events (by real time) and bytes on the links."""

    last_event_real: float
    samples: deque[tuple[float, int]]

    def bytes_per_s(self, now_real: float) -> float:
        while len(self.samples) > 2 and now_real - self.samples[1][0] >= QUIET_REAL_S:
            self.samples.popleft()
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / max(t1 - t0, 1e-3)


class ReplayRunner:
    """One replay's timeline over a started ``ReplayStack``."""

    def __init__(
        self,
        plan: ReplayPlan,
        stack: ReplayStack,
        *,
        timeout_s: float,
        on_status: Callable[[LiveStatus], None] = lambda status: None,
    ) -> None:
        self.plan, self.stack = plan, stack
        self.timeout_s = timeout_s
        self.on_status = on_status
        self.grace = Grace.from_settings(plan.server_settings)
        self.lead = timedelta(seconds=max(120.0, LEAD_REAL_S * stack.speed))
        self.steps = timeline_steps(plan)
        self.views: dict[str, dict[str, Any]] = {}
        # Each view's state and verdict when it was read: read again only once they move.
        self._view_marks: dict[str, str] = {}
        self.settled: set[str] = set()
        self.photos: dict[str, int] = {}
        self.next_step = 0  # steps[:next_step] have run
        # What failed in the replay itself, per session: such a session cannot match.
        self.failures: dict[str, list[str]] = {}
        self.agent_exits: dict[str, list[str]] = {}  # device -> agents that died unplanned
        self._reported_exits: set[int] = set()  # pids already noted
        self.jumps: list[tuple[datetime, datetime]] = []
        self.mode = "running"
        self.client = httpx.Client(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {stack.admin_token}"},
            timeout=30,
        )
        self._feed_cursor = 0
        self._activity = Activity(time.monotonic(), deque([(time.monotonic(), 0)]))
        self._outbox_busy = False
        self._outbox_due: datetime | None = None

    @property
    def clock(self) -> Any:
        return self.stack.clock

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> tuple[bool, float]:
        """Until every verdict is final (True) or the real-time timeout (False); returns that
        and the wall time it took."""
        began = time.monotonic()
        self.stack.run_at_speed()
        last_poll = 0.0
        try:
            while True:
                now_real = time.monotonic()
                now = self.clock.now()
                while self.next_step < len(self.steps) and self.steps[self.next_step].at <= now:
                    self._carry_out(self.steps[self.next_step])
                    self.next_step += 1
                if now_real - last_poll >= POLL_REAL_S:
                    last_poll = now_real
                    self._poll(now)
                    if self._finished(now):
                        return True, time.monotonic() - began
                    self._maybe_jump(now, now_real)
                    self.on_status(self.status(time.monotonic() - began))
                if now_real - began > self.timeout_s:
                    return False, time.monotonic() - began
                time.sleep(TICK_REAL_S)
        finally:
            try:
                self._read_views(everything=True)  # the outcome is read from the last views
            except httpx.HTTPError as exc:
                log.warning("server did not answer the last read: %s", exc)
            self.client.close()

    def _finished(self, now: datetime) -> bool:
        if self.next_step < len(self.steps):
            return False  # a step still to come (a link back the next morning) may change a verdict
        done = all(
            s.session_id in self.settled or now >= self.grace.deadline(s) + timedelta(seconds=60)
            for s in self.plan.sessions
        )
        return done and self._quiet(time.monotonic())

    # -- steps -------------------------------------------------------------------------------

    def _carry_out(self, step: Step) -> None:
        try:
            if step.action is not None:
                self._act(step)
            elif step.photo is not None:
                self._upload_photo(step)
            elif step.session is not None:
                rig = self.stack.rigs[step.session.device_id]
                if rig.forger is not None and rig.powered and rig.link.is_up:
                    report_session(
                        rig.forger, step.session, started=step.kind == "forger_start", at=step.at
                    )
                elif rig.forger is not None and step.kind == "forger_stop":
                    # Unheard (no power or no link), but its class is over all the same: back
                    # on, its heartbeats must not say it still records it.
                    rig.forger.claim_recording(None)
        except Exception as exc:  # one failed step is reported, the replay goes on
            log.exception("step %s at %s failed", step.kind, step.at)
            self._step_failed(step, f"{type(exc).__name__}: {exc}")

    def _step_failed(self, step: Step, what: str) -> None:
        """A step that did not happen as planned spoils its session(s): noted for the table."""
        note = step_failure(step, what)
        for session_id in failed_step_sessions(self.plan, step):
            self.failures.setdefault(session_id, []).append(note)

    def _act(self, step: Step) -> None:
        action = step.action
        assert action is not None
        rig = self.stack.rigs.get(action.device_id or "")
        if action.kind in ("open_session", "close_session"):
            session = self._session(action.session_id or "")
            token = self.plan.lecturer_tokens[session.lecturer_id]
            verb = "open" if action.kind == "open_session" else "close"
            response = self.client.post(
                f"/sessions/{session.session_id}/{verb}",
                headers={"Authorization": f"Bearer {token}"},
            )
            log.info("%s %s: %s", verb, session.session_id, response.status_code)
            if not response.is_success:
                self._step_failed(step, f"{response.status_code} {response.text[:120]}")
            return
        assert rig is not None, f"{action.kind} names no known device"
        if action.kind == "link_down":
            self.stack.link_down(rig)
        elif action.kind == "link_up":
            self.stack.link_up(rig)
        elif action.kind == "link_shape" and action.shape is not None:
            self.stack.link_shape(rig, action.shape)
        elif action.kind == "power_off":
            self.stack.power_off(rig)
        elif action.kind == "power_on":
            self.stack.power_on(rig)

    def _upload_photo(self, step: Step) -> None:
        photo = step.photo
        assert photo is not None
        token = self.plan.lecturer_tokens[photo.lecturer_id]
        response = self.client.post(
            f"/sessions/{photo.session_id}/photos/{photo.kind}",
            files={"file": (f"{photo.kind}.jpg", photo.jpeg, "image/jpeg")},
            data=photo.fields,
            headers={"Authorization": f"Bearer {token}"},
        )
        self.photos[f"{photo.session_id}/{photo.kind}"] = response.status_code
        if not response.is_success:
            log.warning("photo %s/%s: %s", photo.session_id, photo.kind, response.text[:300])
            self._step_failed(step, str(response.status_code))

    def _session(self, session_id: str) -> SessionPlan:
        return next(s for s in self.plan.sessions if s.session_id == session_id)

    # -- watching ----------------------------------------------------------------------------

    def _poll(self, now: datetime) -> None:
        """Read every session's view, the feed since last time, the links and the outboxes."""
        try:
            self._read_views()
            page = self.client.get("/feed", params={"after": self._feed_cursor, "limit": 1000})
            if page.status_code == 200 and page.json()["events"]:
                self._feed_cursor = page.json()["next"]
                self._activity.last_event_real = time.monotonic()
        except httpx.HTTPError as exc:
            log.warning("server did not answer: %s", exc)
        self._notice_agent_exits(now)
        remaining = self.steps[self.next_step :]
        for session in self.plan.sessions:
            view = self.views.get(session.session_id)
            left = steps_left_for(session, remaining)
            if is_settled(session, view, now, self.grace, steps_left=left):
                self.settled.add(session.session_id)
            else:
                self.settled.discard(session.session_id)
        sent = sum(r.link.bytes_up + r.link.bytes_down for r in self.stack.rigs.values())
        self._activity.samples.append((time.monotonic(), sent))
        self._outbox_busy, self._outbox_due = False, None
        for rig in self.stack.rigs.values():
            if not (rig.powered and rig.link.is_up):
                continue  # its uploads wait for power or coverage: a step brings them back
            if not rig.link.connections:
                # Coming back (reconnect backoff): what it will send cannot be jumped over.
                self._outbox_busy = True
                continue
            count, due = rig.outbox_waiting()
            if not count:
                continue
            due_true = due - timedelta(seconds=rig.plan.clock_skew_s) if due else None
            if due_true is None or due_true <= now:
                self._outbox_busy = True
            elif self._outbox_due is None or due_true < self._outbox_due:
                self._outbox_due = due_true

    def _read_views(self, everything: bool = False) -> None:
        """The server's view of every session in English: the list of summaries page by page,
        then the whole evidence (``GET /sessions/{id}``) of each session whose state or verdict
        moved since it was last read (``everything``: of each, for the outcome)."""
        summaries: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500, "lang": "en"}
            if after is not None:
                params["after"] = after
            listed = self.client.get("/sessions", params=params)
            if listed.status_code != 200:
                return
            page = listed.json()
            summaries += page["sessions"]
            after = page["next"]
            if after is None:
                break
        for summary in summaries:
            session_id = summary["id"]
            mark = json.dumps([summary["state"], summary["verdict"]], sort_keys=True)
            if not everything and self._view_marks.get(session_id) == mark:
                continue
            view = self.client.get(f"/sessions/{session_id}", params={"lang": "en"})
            if view.status_code == 200:
                self.views[session_id], self._view_marks[session_id] = view.json(), mark

    def _notice_agent_exits(self, now: datetime) -> None:
        """An agent process that ended while its device is powered (no planned power cut) is
        not restarted: the sessions still to be judged on that device are marked with it, and
        what they show is what the server made of a device that went silent."""
        for rig in self.stack.rigs.values():
            process = rig.process
            if not rig.powered or process is None or process.pid in self._reported_exits:
                continue
            status = process.poll()
            if status is None:
                continue
            self._reported_exits.add(process.pid)
            note = (
                f"agent of {rig.device_id} exited unexpectedly (status {status})"
                f" at {now:%H:%M:%S} UTC"
            )
            log.error("%s; see %s", note, rig.device.root / "agent.log")
            self.agent_exits.setdefault(rig.device_id, []).append(note)
            for session in self.plan.sessions:
                if session.device_id == rig.device_id and session.session_id not in self.settled:
                    self.failures.setdefault(session.session_id, []).append(note)

    def _busy_with(self, now_real: float) -> str | None:
        """What keeps the replay from being quiet, if anything."""
        if self._outbox_busy:
            return "uploads"
        if now_real - self._activity.last_event_real < QUIET_REAL_S:
            return "feed events"
        up = sum(1 for r in self.stack.rigs.values() if r.link.is_up) or 1
        if self._activity.bytes_per_s(now_real) >= QUIET_BYTES_PER_S * up:
            return "traffic"
        return None

    def _quiet(self, now_real: float) -> bool:
        return self._busy_with(now_real) is None

    def _maybe_jump(self, now: datetime, now_real: float) -> None:
        if in_class(self.plan, now, self.lead):
            self.mode = "in class"
            return
        busy = self._busy_with(now_real)
        if busy is not None:
            self.mode = f"busy: {busy}"
            return
        target = fast_forward_target(
            self.plan,
            self.steps,
            now,
            grace=self.grace,
            lead=self.lead,
            settled=self.settled,
            outbox_due=self._outbox_due,
        )
        if target is None or (target - now).total_seconds() < MIN_JUMP_REAL_S * self.stack.speed:
            self.mode = "quiet"
            return
        log.info("fast-forward %s → %s", now, target)
        self.clock.jump_to(target)
        self.jumps.append((now, target))
        self.mode = "fast-forward"
        # Let the server and the agents react to the new time before judging quiet again.
        self._activity.last_event_real = time.monotonic()

    # -- what people see ---------------------------------------------------------------------

    def status(self, wall_s: float) -> LiveStatus:
        return LiveStatus(
            now=self.clock.now(),
            speed=self.clock.speed,
            mode=self.mode,
            wall_s=wall_s,
            jumps=len(self.jumps),
            sessions=tuple(self._session_line(s) for s in self.plan.sessions),
            devices=tuple(self._device_line(r) for r in self.stack.rigs.values()),
        )

    def _session_line(self, session: SessionPlan) -> SessionLine:
        view = self.views.get(session.session_id, {})
        windows = view.get("windows", [])
        return SessionLine(
            session_id=session.session_id,
            device_id=session.device_id,
            behaviours=session.behaviours,
            state=str(view.get("state", "?")),
            windows_asked=sum(1 for w in windows if w.get("requested_at")),
            windows_total=int(view.get("windows_total", 0)),
            clips=sum(1 for w in windows if w.get("clip")),
            photos=len(view.get("photos", [])),
            verdict=str(view.get("verdict", {}).get("state", "?")),
            settled=session.session_id in self.settled,
        )

    @staticmethod
    def _device_line(rig: DeviceRig) -> DeviceLine:
        power = "forged" if rig.plan.forger else ("on" if rig.powered else "off")
        return DeviceLine(
            device_id=rig.device_id,
            link="up" if rig.link.is_up else "down",
            shape=shape_text(rig.shape),
            power=power,
            sent_kb=rig.link.bytes_up / 1000,
        )

    def outcomes(self) -> list[SessionOutcome]:
        return [
            outcome_of(s, self.views.get(s.session_id), self.failures.get(s.session_id, ()))
            for s in self.plan.sessions
        ]

    def report(self, wall_s: float, timed_out: bool) -> ReplayReport:
        return ReplayReport(
            scenario=self.plan.name,
            speed=self.stack.speed,
            wall_s=wall_s,
            timed_out=timed_out,
            clock_start=self.plan.clock_start,
            clock_end=self.clock.now(),
            outcomes=self.outcomes(),
            devices={
                r.device_id: device_counters(r, self.agent_exits.get(r.device_id, []))
                for r in self.stack.rigs.values()
            },
            jumps=list(self.jumps),
            photos=dict(self.photos),
        )


def device_counters(rig: DeviceRig, agent_exits: list[str] | None = None) -> dict[str, Any]:
    """What one device did over the replay, for the report (with its agents that died
    unplanned)."""
    counters: dict[str, Any] = {
        "unexpected_agent_exits": list(agent_exits or []),
        "bytes_up": rig.link.bytes_up,
        "bytes_down": rig.link.bytes_down,
        "link_downs": rig.link_downs,
        "power_cuts": rig.power_cuts,
        "retransmission_wait_s": round(rig.link.retransmissions_s, 1),
        "modem_commands": len(rig.modem.received),
    }
    if rig.forger is not None:
        counters["forged_uploads"] = dict(rig.forger.uploads)
        counters["forger_errors"] = list(rig.forger.errors)
    return counters
