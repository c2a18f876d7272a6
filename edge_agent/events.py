"""The agent's events for the server: queued durably first, delivered in order when the link
allows, forgotten only once the server says it stored them (DESIGN.md §2, "acknowledge only what
is durable").

The broker's PUBACK proves nothing about the server: a broker crash, a full queue or a server
killed before its commit can still lose the event. So each event stays in the state database
until the server's ``event_ack`` names its id (sent after the server's commit). At most
``max_outstanding`` events are in flight, oldest first; one not acknowledged within
``ack_timeout_s`` (doubling per try, capped) is sent again, and so is every one in flight after
a reconnect. The server keeps one event per id, so a repeat costs nothing; a late or unknown ack
is ignored. An ack that says the server refused the event (it cannot read it, or its type is
newer than the server) sets the event aside in the state database, never sent again, so it
cannot hold up the events after it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common import topics
from common.clock import Clock
from common.errors import ProtocolError
from common.schemas import Event, EventAck, EventType, decode, event_id_of
from edge_agent.state import AgentState
from edge_agent.timesync import ClockOffset
from edge_agent.uplink import LinkDown, MqttLink

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _InFlight:
    event_id: str
    attempts: int
    due: float  # monotonic time to send again unless acknowledged


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
        *,
        ack_timeout_s: float = 30.0,
        max_ack_timeout_s: float = 600.0,
        max_outstanding: int = 16,
    ) -> None:
        self.state = state
        self.link = link
        self.clock = clock
        self.offset = offset
        self.device_id = device_id
        self.topic = topics.event(device_id)
        self.ack_timeout_s = ack_timeout_s
        self.max_ack_timeout_s = max_ack_timeout_s
        self.max_outstanding = max_outstanding
        self.ready = threading.Event()  # set when there may be something to send
        self._in_flight: dict[int, _InFlight] = {}  # by state seq; only the sender touches it
        # (event id, refusal or None) from paho's thread
        self._acks: queue.SimpleQueue[tuple[str, str | None]] = queue.SimpleQueue()
        self._connects = -1
        link.on("event_ack", self._on_ack)

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

    @property
    def outstanding(self) -> int:
        """Events sent and not yet acknowledged by the server."""
        return len(self._in_flight)

    def _on_ack(self, topic: str, payload: bytes) -> None:
        # paho's network thread: hand the id to the sender, touch no disk here.
        try:
            ack = decode(EventAck, payload)
        except ProtocolError as exc:
            self.link.counters["bad_event_ack"] += 1
            log.warning("bad event ack: %s", exc)
            return
        self._acks.put((ack.event_id, ack.refused))
        self.ready.set()

    def _apply_acks(self) -> None:
        """Forget the events the server acknowledged; a late or unknown ack changes nothing."""
        while True:
            try:
                event_id, refused = self._acks.get_nowait()
            except queue.Empty:
                return
            seqs = [seq for seq, sent in self._in_flight.items() if sent.event_id == event_id]
            if not seqs:
                self.link.counters["event_ack_unknown"] += 1
            for seq in seqs:
                if refused is None:
                    self.state.event_delivered(seq)
                    self.link.counters["events_acked"] += 1
                else:
                    self.state.event_refused(seq, refused)
                    self.link.counters["events_refused"] += 1
                    log.warning("server refused event %s: %s; set aside", event_id, refused)
                del self._in_flight[seq]

    def deliver(self) -> None:
        """Apply the server's acks, then send what is due, oldest first: at most
        ``max_outstanding`` unacknowledged, each again once its ack is overdue or the link
        was re-established. Stops at the first the broker does not take."""
        self._apply_acks()
        connects = self.link.counters["connects"]
        if connects != self._connects:
            # A new connection: whatever was in flight may have died with the old one.
            self._connects = connects
            for in_flight in self._in_flight.values():
                in_flight.due = 0.0
        pending = self.state.pending_events(limit=self.max_outstanding)
        present = {seq for seq, _ in pending}
        for seq in [s for s in self._in_flight if s not in present]:
            del self._in_flight[seq]  # forgotten meanwhile
        now = self.clock.monotonic()
        for seq, payload in pending:
            sent = self._in_flight.get(seq)
            if sent is not None and now < sent.due:
                continue
            try:
                info = self.link.publish(self.topic, payload)
                info.wait_for_publish(10)
            except (LinkDown, RuntimeError, ValueError):
                return
            if not info.is_published():
                return
            attempts = 1 if sent is None else sent.attempts + 1
            if attempts > 1:
                self.link.counters["events_resent"] += 1
            timeout = min(self.max_ack_timeout_s, self.ack_timeout_s * 2 ** (attempts - 1))
            self._in_flight[seq] = _InFlight(_event_id(payload), attempts, now + timeout)


def _event_id(payload: bytes) -> str:
    try:
        return decode(Event, payload).event_id
    except ProtocolError:
        # Not an event this agent can read (stored by another version): the server answers
        # by the id it names, if any; with none, never acknowledged, sent again like any other.
        return event_id_of(payload) or ""
