"""What devices say besides uploads: presence, heartbeats and events (DESIGN.md §2).

Runs on the ingest worker thread beside the upload processor. Presence comes from the retained
status message (the broker publishes the will when a device drops) and from heartbeats; a device
whose heartbeats stop for ``heartbeat_timeout_s`` is marked offline by ``sweep_timeouts``.

Presence is stamped by when it happened, not when it was processed. While the consumer is live
(caught up with the broker, ``caught_up``), a device coming online is stamped at receipt: the
message is happening now, and a device's own clock must not let it claim it came back earlier
than it did (a stated offset would otherwise hide an outage). Only a message drained from a
backlog after a server outage needs the device's word: a heartbeat counts at its device time less
the offset it states (a status through the offset of the device's last heartbeat), never later
than its receipt (as ``sessions.server_time`` does for events), never before the device's last
presence change, nor before the receipt of an offline we heard while live (kept in memory: it
does not survive a server restart). An offline from the will or a timeout is stamped at the last
time the device was seen. Sweeps wait until the consumer has caught up: before that, a silence
may only be a backlog.

Each stored event is acknowledged to its device (``event_ack``) after its transaction committed,
and again for a repeat, so the device keeps an event until the server has it.

Presence and heartbeats are the bulk of the traffic (a fleet of 10,000 beats ~333 times a
second). With ``batched`` (the running server) ``handle`` only checks them and keeps them in
order; ``flush`` applies them all in one transaction, and the consumer calls it (through the
processor's flush) before acknowledging them, so a heartbeat is still acknowledged to the broker
only once its effect committed, but a batch costs one commit, not one per message. Before an
event, what is waiting is flushed first, so every message takes effect in the order received.
A message of the batch that raises anything but a database error is rolled back alone (a
SAVEPOINT) and kept in ``dead_letters`` with the rest of the batch's commit, so it is
acknowledged like the others instead of failing every flush after it.

The timeout sweep runs on the scheduler's thread and reads committed rows, so it also asks what
``handle`` has heard and not yet committed (``_heard``): a heartbeat waiting for its group commit
is the device seen, and must not let the sweep mark it offline meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_

from common import topics
from common.clock import Clock, SystemClock
from common.errors import ProtocolError
from common.heartbeat import Heartbeat
from common.schemas import (
    MAX_REFUSAL_TEXT,
    Event,
    EventAck,
    Status,
    StatusState,
    decode,
    event_id_of,
)
from ingest_server import feed
from ingest_server.db import SessionFactory
from ingest_server.device_health import HEALTH, HealthBatch, HealthRow
from ingest_server.errors import RETRYABLE_ERRORS, error_text
from ingest_server.ingest import Outgoing
from ingest_server.models import DeadLetter
from ingest_server.sessions import append_feed, record_device_event

log = logging.getLogger(__name__)


def device_time_to_server(
    device_at: datetime | None, offset_s: float | None, received_at: datetime
) -> datetime:
    """When something the device stamped ``device_at`` happened in server time: less the clock
    offset it stated, never after ``received_at`` (a device clock cannot run ahead of us)."""
    if device_at is None:
        return received_at
    try:
        at = device_at - timedelta(seconds=offset_s or 0.0)
    except (OverflowError, ValueError):  # out of range, or not a number (NaN)
        return received_at
    return min(at, received_at)


@dataclass(frozen=True, slots=True)
class _Said:
    """A status or heartbeat checked and waiting for ``flush``, with what was known on receipt."""

    device_id: str
    message: Status | Heartbeat
    payload: bytes  # as received, for ``dead_letters``
    received: datetime
    live: bool


class DeviceMessages:
    """Handles ``status``, ``heartbeat`` and ``event`` messages; tells who came back online
    and which sessions changed, so requests can be re-sent and verdicts recomputed.

    ``caught_up``, when set (the ingest consumer's), says whether the backlog at the broker has
    been drained; until it says so, ``sweep_timeouts`` marks nobody offline. ``batched``: keep
    statuses and heartbeats for ``flush`` (which the caller must call before it acknowledges
    them) instead of committing each on its own; ``counters["dead_lettered"]`` counts those
    of them that ``flush`` set aside as dead letters.
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        heartbeat_timeout_s: float,
        clock: Clock | None = None,
        on_sessions_changed: Callable[[set[str]], None] | None = None,
        on_online: Callable[[str], None] | None = None,
        caught_up: Callable[[], bool] | None = None,
        batched: bool = False,
    ) -> None:
        self.session_factory = session_factory
        self.batched = batched
        self._waiting: list[_Said] = []  # checked, in order received, not yet committed
        self.heartbeat_timeout = timedelta(seconds=heartbeat_timeout_s)
        self.clock = clock or SystemClock()
        self.on_sessions_changed = on_sessions_changed
        self.on_online = on_online
        self.caught_up = caught_up
        self.counters: Counter[str] = Counter()
        # Receipt time of each device's last offline heard while live: a floor for presence
        # drained from a later backlog (the device can only have come back after it).
        self._offline_heard: dict[str, datetime] = {}
        # When each device was last heard alive, from receipt on, for the sweep on the
        # scheduler's thread: what is waiting for ``flush`` is not in the database yet.
        self._heard: dict[str, datetime] = {}
        self._heard_lock = threading.Lock()

    def _live(self) -> bool:
        """Whether the messages handled now are happening now (no backlog being drained)."""
        return self.caught_up is None or self.caught_up()

    def _backlog_floor(self, device_id: str, at: datetime) -> datetime:
        heard = self._offline_heard.get(device_id)
        return at if heard is None else max(at, heard)

    def handle(self, up: topics.UpTopic, payload: bytes) -> list[Outgoing]:
        """One device message; return the event acks to publish (their effects committed). A
        bad message is counted and logged, never raised; a database error is raised (the
        consumer retries it)."""
        try:
            if up.kind is topics.UpKind.STATUS:
                if payload:  # empty: a cleared retained message
                    self._keep(up.device_id, decode(Status, payload), payload)
            elif up.kind is topics.UpKind.HEARTBEAT:
                self._keep(up.device_id, decode(Heartbeat, payload), payload)
            elif up.kind is topics.UpKind.EVENT:
                self.flush()  # presence heard before the event takes effect before it
                return self._event_payload(up.device_id, payload)
        except (ProtocolError, ValueError) as exc:
            # ValueError: a value that passed validation but not date arithmetic; the message's
            # fault, so counted like a malformed one rather than retried by the consumer.
            self.counters[f"bad_{up.kind.value}"] += 1
            log.warning("bad %s from %s: %s", up.kind.value, up.device_id, exc)
        return []

    def _keep(self, device_id: str, message: Status | Heartbeat, payload: bytes) -> None:
        """Check a status or heartbeat now; apply it at ``flush`` (at once unless batched)."""
        if message.device_id != device_id:
            # The topic names the broker login; a message about someone else is not its word.
            kind = "status" if isinstance(message, Status) else "heartbeat"
            self.counters[f"{kind}_device_mismatch"] += 1
            log.warning("%s from %s names device %s; ignored", kind, device_id, message.device_id)
            return
        said = _Said(device_id, message, payload, self.clock.now(), self._live())
        self._note_heard(said)
        self._waiting.append(said)
        if not self.batched:
            try:
                self.flush()
            except BaseException:
                self._waiting.clear()  # the caller handles this message again
                raise

    def _note_heard(self, said: _Said) -> None:
        """Tell the sweep the device was seen: a heartbeat or an online status, at the time it
        will count at (receipt when live; a backlog heartbeat's own time, less the floors that
        can only make it later)."""
        message = said.message
        if isinstance(message, Heartbeat):
            if said.live:
                at = said.received
            else:
                at = device_time_to_server(message.at, message.clock_offset_s, said.received)
        elif message.state == StatusState.ONLINE and said.live:
            at = said.received
        else:
            return  # an offline, or a backlog status whose time needs the device's row
        with self._heard_lock:
            before = self._heard.get(said.device_id)
            if before is None or at > before:
                self._heard[said.device_id] = at

    def flush(self) -> None:
        """Apply the statuses and heartbeats kept since the last flush in one transaction, in
        the order received; then tell who came online. A database error raises with nothing
        applied and everything still kept, so the next flush tries it all again.

        Batched, a message whose applying raises anything else (a bug, a value nobody
        foresaw) must not fail its batch for ever, holding every device's presence and the
        consumer's acks: the batch is applied again with each message in a SAVEPOINT, and one
        that still raises is rolled back alone and kept in ``dead_letters`` in the same
        transaction, as the consumer keeps a poison message. Unbatched, the error reaches the
        caller, which keeps (the consumer) or reports (a replay) its one message."""
        if not self._waiting:
            return
        try:
            came_online, counts = self._apply_all(self._waiting, guarded=False)
        except RETRYABLE_ERRORS:
            raise
        except Exception as exc:
            if not self.batched:
                raise
            # The fast way costs nothing per message; this one a savepoint each, only now.
            log.warning(
                "a batch of %d statuses and heartbeats failed (%s); applying each on its own",
                len(self._waiting),
                error_text(exc),
            )
            came_online, counts = self._apply_all(self._waiting, guarded=True)
        self._waiting = []
        self.counters.update(counts)
        if self.on_online:
            for device_id in came_online:
                self.on_online(device_id)

    def _apply_all(self, waiting: list[_Said], guarded: bool) -> tuple[list[str], Counter[str]]:
        """Apply ``waiting`` in one transaction (each in its own savepoint when ``guarded``);
        return who came online and the counts. On any error nothing is applied."""
        # Offlines heard in this batch count for its later messages at once; undone on failure.
        heard = {s.device_id: self._offline_heard.get(s.device_id) for s in waiting}
        came_online: list[str] = []
        counts: Counter[str] = Counter()
        try:
            with self.session_factory.begin() as db:
                # One query loads every row the batch touches; the rows change in memory and
                # are written together (``HealthBatch.write``), each device's once.
                batch = HealthBatch.load(db, {said.device_id for said in waiting})
                for said in waiting:
                    if guarded:
                        online = self._apply_or_keep(batch, said, counts)
                    else:
                        online = self._apply(batch, said, counts)
                    if online:
                        came_online.append(said.device_id)
                batch.write()
        except BaseException:
            for device_id, before in heard.items():
                self._set_offline_heard(device_id, before)
            raise
        return came_online, counts

    def _set_offline_heard(self, device_id: str, at: datetime | None) -> None:
        if at is None:
            self._offline_heard.pop(device_id, None)
        else:
            self._offline_heard[device_id] = at

    def _apply(self, batch: HealthBatch, said: _Said, counts: Counter[str]) -> bool:
        """Apply one status or heartbeat to ``batch``; True when its device came online."""
        kind = "heartbeat" if isinstance(said.message, Heartbeat) else "status"
        try:
            if isinstance(said.message, Heartbeat):
                online = self._heartbeat(batch, said, said.message)
                counts["heartbeats"] += 1
            else:
                online = self._status(batch, said, said.message)
                counts[f"status_{said.message.state.value}"] += 1
        except (ValueError, OverflowError) as exc:
            # Values that passed validation but not date arithmetic: the message's fault,
            # counted like a malformed one (retrying would not change it).
            counts[f"bad_{kind}"] += 1
            log.warning("bad %s from %s: %s", kind, said.device_id, exc)
            return False
        return online

    def _apply_or_keep(self, batch: HealthBatch, said: _Said, counts: Counter[str]) -> bool:
        """``_apply`` and write its effects in a savepoint; if that raises anything but a
        database error, roll back its effects alone and add it to ``dead_letters`` instead."""
        offline_heard = self._offline_heard.get(said.device_id)
        before = batch.rows.get(said.device_id)
        before = before.copy() if before is not None else None
        mine: Counter[str] = Counter()
        try:
            with feed.savepoint(batch.db):
                online = self._apply(batch, said, mine)
                batch.write()
        except RETRYABLE_ERRORS:
            raise
        except Exception as exc:
            self._set_offline_heard(said.device_id, offline_heard)
            batch.changes = []
            if before is None:
                batch.rows.pop(said.device_id, None)  # made in the savepoint, gone with it
            else:
                batch.rows[said.device_id] = before
            topic = topics.heartbeat if isinstance(said.message, Heartbeat) else topics.status
            error = error_text(exc)
            batch.db.add(
                DeadLetter(
                    topic=topic(said.device_id),
                    payload=said.payload,
                    error=error,
                    attempts=1,
                    first_at=said.received,
                    last_at=self.clock.now(),
                )
            )
            counts["dead_lettered"] += 1
            log.error(
                "gave up on %s: kept as a dead letter (%s)",
                topic(said.device_id),
                error,
                exc_info=exc,
            )
            return False
        counts.update(mine)
        return online

    def _status(self, batch: HealthBatch, said: _Said, status: Status) -> bool:
        """Apply a status; True when the device came online."""
        device_id, received, live = said.device_id, said.received, said.live
        online = status.state == StatusState.ONLINE
        row = batch.health(device_id)
        offset = row.last_offset()
        if online and live:
            at = received  # it is back now, whatever its clock says
        elif status.at is not None and offset is not None:
            # The device's own stamp, through the offset of its last heartbeat (with no
            # estimate yet, its clock may be anything: then receipt is the best we know).
            at = device_time_to_server(status.at, offset, received)
        elif online:
            at = received
        else:
            # The will: the broker noticed the device gone; it was last seen before.
            at = row.last_seen() or received
        if online and not live:
            at = self._backlog_floor(device_id, at)
        if row.status_at is not None:
            at = max(at, row.status_at)  # presence never runs backwards
        came_online = self._change(batch, row, online, at, "status", status.at)
        if not online and live:
            self._offline_heard[device_id] = received
        return came_online

    def _change(
        self,
        batch: HealthBatch,
        row: HealthRow,
        online: bool,
        at: datetime,
        source: str,
        device_at: datetime | None = None,
    ) -> bool:
        """Record a presence change at ``at``; True when the device came online."""
        state = "online" if online else "offline"
        if row.status == state:
            return False
        batch.record_change(row.device_id, at, online, source)
        append_feed(
            batch.db,
            "device_" + state,
            None,
            {
                "device_id": row.device_id,
                "at": at.isoformat(),
                "source": source,
                "device_at": device_at.isoformat() if device_at else None,
            },
        )
        row.set_presence(state, at)
        return online

    def _heartbeat(self, batch: HealthBatch, said: _Said, beat: Heartbeat) -> bool:
        """Apply a heartbeat; True when the device came online."""
        device_id, received = said.device_id, said.received
        if said.live:
            at = received  # happening now: the device's clock cannot move it back
        else:
            at = device_time_to_server(beat.at, beat.clock_offset_s, received)
            at = self._backlog_floor(device_id, at)
        row = batch.health(device_id)
        if row.last_heartbeat_at is None or at >= row.last_heartbeat_at:
            row.set_heartbeat(at, beat)
        # A heartbeat older than the last change (a late redelivery) changes nothing.
        if row.status != "online" and (row.status_at is None or at > row.status_at):
            return self._change(batch, row, True, at, "heartbeat", beat.at)
        return False

    def _event_payload(self, device_id: str, payload: bytes) -> list[Outgoing]:
        """An event, or the refusal of one that can never be stored: answered all the same, so
        the device sets it aside rather than sending it for ever ahead of later events."""
        try:
            event = decode(Event, payload)
        except ProtocolError as exc:
            self.counters["bad_event"] += 1
            log.warning("bad event from %s: %s", device_id, exc)
            return self._refuse(device_id, event_id_of(payload), str(exc))
        if event.device_id != device_id:
            self.counters["event_device_mismatch"] += 1
            log.warning("event from %s names device %s; refused", device_id, event.device_id)
            return self._refuse(device_id, event.event_id, "names another device")
        try:
            return self._event(device_id, event)
        except ValueError as exc:  # its values passed validation, not date arithmetic
            self.counters["bad_event"] += 1
            log.warning("bad event %s from %s: %s", event.event_id, device_id, exc)
            return self._refuse(device_id, event.event_id, f"invalid: {exc}")

    def _refuse(self, device_id: str, event_id: str | None, reason: str) -> list[Outgoing]:
        """A refused ack, only to the login that sent the event and only when it names an id."""
        if event_id is None:
            return []
        ack = EventAck(
            event_id=event_id, server_time=self.clock.now(), refused=reason[:MAX_REFUSAL_TEXT]
        )
        self.counters["event_refusals"] += 1
        return [Outgoing(topics.event_ack(device_id), ack.to_bytes(), 1)]

    def _event(self, device_id: str, event: Event) -> list[Outgoing]:
        with self.session_factory.begin() as db:
            touched = record_device_event(db, event, self.clock.now())
        # Committed (or already stored before: a repeat is acknowledged again).
        self.counters["events"] += 1
        if touched and self.on_sessions_changed:
            self.on_sessions_changed(touched)
        ack = EventAck(event_id=event.event_id, server_time=self.clock.now())
        self.counters["event_acks"] += 1
        return [Outgoing(topics.event_ack(device_id), ack.to_bytes(), 1)]

    def sweep_timeouts(self) -> list[str]:
        """Mark devices whose heartbeats stopped as offline, at the last time each was seen;
        return them. Does nothing until the consumer has caught up with the broker. A device
        heard within the timeout whose message is still waiting for its commit is not silent."""
        if self.caught_up is not None and not self.caught_up():
            self.counters["sweeps_deferred"] += 1
            return []
        now = self.clock.now()
        gone: list[str] = []
        cutoff = now - self.heartbeat_timeout
        with self._heard_lock:
            # Older than the cutoff, a receipt decides nothing (and is committed long since).
            self._heard = {d: at for d, at in self._heard.items() if at >= cutoff}
            heard = set(self._heard)
        with self.session_factory.begin() as db:
            # Only rows silent since the cutoff: a sweep every second must not load the fleet.
            batch = HealthBatch.load(
                db,
                None,
                HEALTH.c.status == "online",
                or_(HEALTH.c.last_heartbeat_at.is_(None), HEALTH.c.last_heartbeat_at < cutoff),
                or_(HEALTH.c.status_at.is_(None), HEALTH.c.status_at < cutoff),
            )
            for row in list(batch.rows.values()):
                if row.device_id in heard:
                    continue  # heard within the timeout; its commit is still to come
                last = row.last_seen()
                if last is not None and now - last > self.heartbeat_timeout:
                    self._change(batch, row, False, last, "heartbeat_timeout")
                    gone.append(row.device_id)
            batch.write()
        for device_id in gone:
            self._offline_heard[device_id] = now
        self.counters["status_offline"] += len(gone)
        return gone
