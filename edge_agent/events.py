"""The agent's events for the server: queued durably first, delivered in order when the link
allows, forgotten only once the broker has them (DESIGN.md §2, "acknowledge only what is
durable")."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import uuid
from datetime import datetime
from typing import Any

from common import topics
from common.clock import Clock
from common.schemas import Event, EventType
from edge_agent.state import AgentState
from edge_agent.timesync import ClockOffset
from edge_agent.uplink import LinkDown, MqttLink

log = logging.getLogger(__name__)


class EventQueue:
    """The ``EventSink`` of a device: each event stored in its state database, then sent by
    ``run``; a state disk that fails still lets an event out undurably while the link is up."""

    def __init__(
        self,
        state: AgentState,
        link: MqttLink,
        clock: Clock,
        offset: ClockOffset,
        device_id: str,
    ) -> None:
        self.state = state
        self.link = link
        self.clock = clock
        self.offset = offset
        self.device_id = device_id
        self.topic = topics.event(device_id)
        self.ready = threading.Event()  # set when there may be something to send

    def emit(
        self,
        type_: EventType,
        *,
        cmd_id: str | None = None,
        session_id: str | None = None,
        data: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> bytes:
        """Queue an event durably; the sender delivers it when the link allows. ``at`` is
        when it happened, if that was before now (device clock)."""
        now = self.clock.now()
        offset = self.offset.seconds if at is None else self.offset.at_wall(at)
        event = Event(
            # Unique even for a 64-character device id or two events in one microsecond:
            # the server keeps one event per event_id.
            event_id=f"{self.device_id[:24]}-{now:%Y%m%d%H%M%S%f}-{uuid.uuid4().hex[:16]}",
            device_id=self.device_id,
            type=type_,
            at=at or now,
            clock_offset_s=offset,
            cmd_id=cmd_id,
            session_id=session_id,
            data=data or {},
        )
        payload = event.to_bytes()
        try:
            self.state.push_event(payload)
        except sqlite3.Error as exc:
            # The state disk is full or failing: still say it now if the link is up.
            self.link.counters["event_not_durable"] += 1
            log.error("event %s not stored (%s); sending it undurably", type_.value, exc)
            with contextlib.suppress(LinkDown):
                self.link.publish(self.topic, payload)
        self.ready.set()
        return payload

    def send_again(self, payload: bytes) -> None:
        """Queue an event said before (the first answer to a repeated command) once more."""
        self.state.push_event(payload)
        self.ready.set()

    def run(self, stop: threading.Event) -> None:
        """Deliver queued events until ``stop``; the sender thread's body."""
        while not stop.is_set():
            self.ready.wait(1.0)
            self.ready.clear()
            if not self.link.connected.is_set():
                continue
            try:
                self.deliver()
            except Exception:  # a state-disk error must not end event delivery for good
                self.link.counters["event_sender_error"] += 1
                log.exception("event delivery failed; retrying")
                stop.wait(1.0)

    def deliver(self) -> None:
        """Send what is queued, oldest first; stop at the first the broker does not take."""
        for seq, payload in self.state.pending_events():
            try:
                info = self.link.publish(self.topic, payload)
                info.wait_for_publish(10)
            except (LinkDown, RuntimeError, ValueError):
                return
            if not info.is_published():
                return
            self.state.event_delivered(seq)
