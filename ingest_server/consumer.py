"""The MQTT side of ingest: take device messages off the broker, feed the processor, send acks.

One paho client with ``manual_ack`` and a persistent session (3.1.1 ``clean_session=False``;
5 ``clean_start`` False plus a session expiry), so device messages wait at the broker while the
server is down. A QoS 1 message is acknowledged to the broker (PUBACK) only after the flush that
made its effect durable has committed (DESIGN.md §2, "acknowledge only what is durable"): a
crash before then costs a redelivery, never a loss.

paho's network thread puts messages on a bounded queue; one worker thread, always the same (the
processor is not thread-safe and SQLite likes its own thread), hands them to ``processor.handle``
and group-commits with ``processor.flush`` when the queue runs dry or every
``flush_every_messages`` / ``flush_interval_s``. In flight at once: at most
``mqtt_max_inflight`` (MQTT 5 ``ReceiveMaximum``; Mosquitto's ``max_inflight_messages`` on 3.1.1).

A message whose handling raises a database or storage error (``RETRYABLE_ERRORS``) is retried
with backoff. One that still fails after ``ingest_max_attempts`` while the database answers, or
one that raises anything else (a bug, or input no retry will change), is a poison message: it is
written to ``dead_letters`` in a committed transaction at once and then acknowledged, so it never
holds the single worker (and every other device's messages) in backoff. If even that write fails
the database is down, so nothing is acknowledged and the message is tried again until it passes.
A flush is retried with backoff until it commits; what it applies for many messages at once
(batched presence, ``device_messages``) sets its own poison messages aside as dead letters, so
only a database error can hold it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import select

from common import topics
from common.clock import SystemClock
from ingest_server import audit
from ingest_server.db import make_engine, make_session_factory
from ingest_server.errors import RETRYABLE_ERRORS, error_text
from ingest_server.ingest import IngestProcessor, Outgoing
from ingest_server.models import DeadLetter
from ingest_server.settings import Settings
from ingest_server.stores import open_store

log = logging.getLogger(__name__)

# Messages in a row that found the worker idle: the broker holds no backlog for us.
CAUGHT_UP_WAITS = 32


def backoff_delay(
    attempt: int, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): capped exponential, full jitter."""
    return min(cap, base * (2 ** min(attempt, 30))) * (0.5 + 0.5 * rng())


def build_processor(settings: Settings) -> IngestProcessor:
    """A processor on the settings' database and evidence store, with the system clock."""
    engine = make_engine(settings.database_url)
    store = open_store(settings)
    sessions = make_session_factory(engine, audit.load_key(settings.audit_key_file))
    return IngestProcessor(sessions, store, settings, SystemClock())


def replay_dead_letters(
    processor: IngestProcessor, letter_ids: list[int] | None = None
) -> tuple[int, int]:
    """Feed dead letters not yet replayed (or ``letter_ids``) back through ``processor``, each
    flushed and marked replayed when it passes; return (replayed, still failing). Acks it
    would send are not published (no broker here): a device that waits for one asks again."""
    factory = processor.session_factory
    with factory() as db:
        query = select(DeadLetter).where(DeadLetter.replayed_at.is_(None))
        if letter_ids:
            query = query.where(DeadLetter.id.in_(letter_ids))
        letters = list(db.scalars(query.order_by(DeadLetter.id)))
    replayed = failed = 0
    for letter in letters:
        try:
            processor.handle(letter.topic, letter.payload)
            processor.flush()
        except Exception as exc:
            failed += 1
            error = error_text(exc)
            log.warning("dead letter %d still fails: %s", letter.id, error)
            with factory.begin() as db:
                row = db.get(DeadLetter, letter.id)
                if row is not None:
                    row.attempts, row.error = row.attempts + 1, error
                    row.last_at = processor.clock.now()
            continue
        with factory.begin() as db:
            row = db.get(DeadLetter, letter.id)
            if row is not None:
                row.replayed_at = processor.clock.now()
        replayed += 1
    return replayed, failed


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message off the broker, with what it takes to acknowledge it on its own connection."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int  # a message id means nothing on a later connection
    received_at: float = 0.0  # time.monotonic() when paho handed it over (``ingest_lag_s``)


_STOP = object()


class IngestConsumer:
    """Runs ``processor`` on every message of ``up/#``; acknowledges each after its commit.

    ``counters``: ``received``, ``handled``, ``acked``, ``flushes``, ``handle_failed``,
    ``retries`` (backoffs before handling again), ``flush_failed``, ``dead_lettered``,
    ``dead_letter_failed``, ``stale`` (received on a
    connection since lost: the broker sends it again), ``dropped_qos0`` (queue full).
    """

    def __init__(self, settings: Settings, processor: IngestProcessor) -> None:
        self.settings = settings
        self.processor = processor
        self.counters: Counter[str] = Counter()
        self.connections = 0
        self.connected = threading.Event()  # connected and subscribed
        self._connection = 0
        self._connected_at = time.monotonic()
        self._last_received = 0.0
        # When the worker last acknowledged a batch: the broker sends more of a backlog only
        # after our acks, so quiet is measured from here as well as from the last receipt.
        self._last_acked = 0.0
        self._busy = False  # the worker holds messages not yet acknowledged
        # When the oldest message the worker took and has not yet acknowledged was received.
        self._uncommitted_since: float | None = None
        # Caught up since the (re)connect: sticky until the next one (see ``caught_up``).
        self._drained = False
        self._waits = 0  # messages in a row the worker had to wait for
        self._stopping = threading.Event()
        # Bounded: the broker sends at most mqtt_max_inflight unacknowledged QoS 1 messages.
        self._queue: queue.Queue[Inbound | object] = queue.Queue(
            maxsize=settings.mqtt_max_inflight + 64
        )
        self._client = self._make_client()
        self._worker = threading.Thread(target=self._work, name="ingest-worker", daemon=True)

    # -- the connection -------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        settings = self.settings
        v5 = settings.mqtt_protocol == "5"
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        client.username_pw_set(settings.mqtt_username, settings.mqtt_secret())
        if settings.mqtt_tls:
            # Verifies the broker's chain against the CA and its name against mqtt_host.
            ca_file = settings.mqtt_ca_file
            client.tls_set(ca_certs=str(ca_file) if ca_file else None)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background (paho reconnects with backoff) and start the worker."""
        settings = self.settings
        kwargs: dict[str, Any] = {}
        if settings.mqtt_protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = settings.mqtt_session_expiry_s
            props.ReceiveMaximum = settings.mqtt_max_inflight
            # A clean start would throw away whatever devices sent while the server was down.
            kwargs = {"clean_start": False, "properties": props}
        self._worker.start()
        self._client.connect_async(
            settings.mqtt_host, settings.mqtt_port, settings.mqtt_keepalive_s, **kwargs
        )
        self._client.loop_start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the message in hand, flush and acknowledge what committed, disconnect."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=1.0)
        self._worker.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set (the server's task group)."""
        self.start()
        try:
            await stop.wait()
        finally:
            await asyncio.to_thread(self.stop)

    @property
    def errors(self) -> int:
        """Failed attempts of any kind (each also logged)."""
        kinds = ("handle_failed", "flush_failed", "dead_letter_failed")
        return sum(self.counters[k] for k in kinds)

    def caught_up(self) -> bool:
        """Whether what the broker held for us since the (re)connect has been handled. Until
        then our picture of the fleet is behind, and heartbeat-timeout sweeps wait.

        A backlog keeps the queue full (the broker refills it as fast as we acknowledge), so
        we are caught up once, with nothing waiting for a commit, the queue stayed empty for
        ``ingest_quiet_s`` since the last message was received and the last batch was
        acknowledged (a batch that took longer than that to handle says nothing about what the
        broker still holds: it sends the next only after our acks), or the worker had to wait
        for each of the last ``CAUGHT_UP_WAITS`` messages (a steady trickle never leaves a
        quiet gap). It holds until the connection is lost."""
        if not self.connected.is_set():
            return False
        if self._drained:
            return True
        if self._busy or not self._queue.empty():
            return False
        quiet_since = max(self._connected_at, self._last_received, self._last_acked)
        if time.monotonic() - quiet_since >= self.settings.ingest_quiet_s:
            self._drained = True
        return self._drained

    def ingest_lag_s(self) -> float:
        """Seconds since the oldest message received and not yet committed and acknowledged
        was received (0 when none waits): what the worker holds, else the head of its queue. A
        backlog the broker still holds for us is not seen here (``caught_up`` says whether
        there may be one). Read from any thread: a sample, not a lock-step figure."""
        oldest = self._uncommitted_since
        if oldest is None:
            with self._queue.mutex:
                head = self._queue.queue[0] if self._queue.queue else None
            if isinstance(head, Inbound):
                oldest = head.received_at
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason_code: mqtt.ReasonCode,
        properties: object,
    ) -> None:
        if reason_code.is_failure:
            self.counters["connect_refused"] += 1
            log.warning("broker refused the ingest connection: %s", reason_code)
            return
        self._connection += 1
        self.connections += 1
        self._drained, self._waits = False, 0
        self._connected_at = time.monotonic()
        subscription = topics.up_all(self.settings.shared_group)
        if self.settings.mqtt_protocol == "5":
            # Retained statuses only for a new subscription: on a resumed session they are
            # old news, and would arrive after the backlog that is newer than them.
            options = SubscribeOptions(
                qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            client.subscribe(subscription, options=options)
        else:
            client.subscribe(subscription, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[mqtt.ReasonCode],
        properties: object,
    ) -> None:
        if all(not rc.is_failure for rc in reason_codes):
            self._connected_at = time.monotonic()
            self.connected.set()
            subscription = topics.up_all(self.settings.shared_group)
            log.info("subscribed to %s as %s", subscription, self.settings.mqtt_client_id)
        else:
            self.counters["subscribe_refused"] += 1
            log.error("broker refused the ingest subscription: %s", reason_codes)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason_code: mqtt.ReasonCode,
        properties: object,
    ) -> None:
        if self.connected.is_set() and not self._stopping.is_set():
            log.warning("broker connection lost (%s); paho reconnects", reason_code)
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        # paho's network thread: hand over and return; never process here.
        self._last_received = time.monotonic()
        item = Inbound(
            message.topic,
            bytes(message.payload),
            message.mid,
            message.qos,
            self._connection,
            self._last_received,
        )
        self.counters["received"] += 1
        if item.qos == 0:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.counters["dropped_qos0"] += 1
            return
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- the worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        pending: list[Inbound] = []  # handled, not yet committed and acknowledged
        last_flush = time.monotonic()
        oldest = 0.0  # when the first of ``pending`` was handled
        settings = self.settings
        while True:
            # The linger only once caught up: before that, a dry queue commits and acknowledges
            # at once, so that finding it still dry after the acks tells a trickle (the broker
            # has nothing more for us) from a backlog (it sends more as soon as we ack). With
            # the linger, what we hold back would be counted as a backlog for ever.
            linger_s = settings.flush_linger_s if self._drained else 0.0
            if pending:
                linger = oldest + linger_s - time.monotonic()
                wait = max(0.0, min(settings.flush_interval_s, linger))
            else:
                wait = 0.5
            waited = self._queue.empty() and not pending
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if isinstance(item, Inbound) and self._uncommitted_since is None:
                self._uncommitted_since = item.received_at
            self._waits = self._waits + 1 if waited else 0
            if self._waits >= CAUGHT_UP_WAITS and self.connected.is_set():
                self._drained = True
            if item is _STOP or self._stopping.is_set():
                break  # what is still queued is not acknowledged: the broker sends it again
            if isinstance(item, Inbound):
                if item.connection != self._connection:
                    self.counters["stale"] += 1  # the broker sends it again on this connection
                    if not pending:
                        self._uncommitted_since = None
                    continue
                self._busy = True
                out = self._handle(item)
                if out is None:
                    break  # stopping while the database is away: leave it unacknowledged
                self._publish(out)
                if not pending:
                    oldest = time.monotonic()
                pending.append(item)
            now = time.monotonic()
            # Caught up, a dry queue commits once the oldest has lingered a little: at a
            # steady trickle that groups a few dozen heartbeats per commit instead of one.
            due = pending and (
                (self._queue.empty() and now - oldest >= linger_s)
                or len(pending) >= settings.flush_every_messages
                or now - last_flush >= settings.flush_interval_s
            )
            if due:
                if not self._flush_until_committed():
                    break
                self._ack(pending)
                pending = []
                self._uncommitted_since = None
                last_flush = time.monotonic()
            self._busy = bool(pending)
        # Stopping: whatever is handled but not durable is made so and acknowledged if the
        # database lets us; otherwise the broker redelivers it to the next run.
        if pending or self._busy:
            with contextlib.suppress(Exception):
                self._publish(self.processor.flush())
                self._ack(pending)
        self._busy = False

    def _handle(self, item: Inbound) -> list[Outgoing] | None:
        """``processor.handle`` with retries; ``[]`` once dead-lettered; ``None`` if stopping
        before it could be handled or kept."""
        settings = self.settings
        first_at = self.processor.clock.now()
        attempts = 0  # in a row while the database answered
        total = 0
        while True:
            attempts += 1
            total += 1
            try:
                out = self.processor.handle(item.topic, item.payload)
            except Exception as exc:
                self.counters["handle_failed"] += 1
                error = error_text(exc)
                log.warning(
                    "handling %s failed (attempt %d): %s",
                    item.topic,
                    total,
                    error,
                    exc_info=total == 1,
                )
                retryable = isinstance(exc, RETRYABLE_ERRORS)
                if not retryable or attempts >= settings.ingest_max_attempts:
                    if self._dead_letter(item, error, total, first_at):
                        return []
                    attempts = 0  # the database is away: it needs a fair run once back
            else:
                self.counters["handled"] += 1
                return out
            self.counters["retries"] += 1
            delay = backoff_delay(
                total - 1, settings.ingest_retry_base_s, settings.ingest_retry_cap_s
            )
            if self._stopping.wait(delay):
                return None

    def _dead_letter(self, item: Inbound, error: str, attempts: int, first_at: Any) -> bool:
        """Keep a poison message durably; False when the database will not take it."""
        try:
            with self.processor.session_factory.begin() as db:
                db.add(
                    DeadLetter(
                        topic=item.topic,
                        payload=item.payload,
                        error=error,
                        attempts=attempts,
                        first_at=first_at,
                        last_at=self.processor.clock.now(),
                    )
                )
        except Exception as exc:
            self.counters["dead_letter_failed"] += 1
            log.error("could not keep %s as a dead letter (%s); retrying it", item.topic, exc)
            return False
        self.counters["dead_lettered"] += 1
        log.error("gave up on %s after %d attempts: kept as a dead letter", item.topic, attempts)
        return True

    def _flush_until_committed(self) -> bool:
        """Flush until it commits (backing off); False if asked to stop first."""
        failures = 0
        while True:
            try:
                out = self.processor.flush()
            except Exception as exc:
                self.counters["flush_failed"] += 1
                log.warning("flush failed (%s); nothing acknowledged, retrying", exc)
                delay = backoff_delay(
                    failures, self.settings.ingest_retry_base_s, self.settings.ingest_retry_cap_s
                )
                failures += 1
                if self._stopping.wait(delay):
                    return False
                continue
            self.counters["flushes"] += 1
            self._publish(out)
            return True

    def _ack(self, items: list[Inbound]) -> None:
        """PUBACK, in the order received, what the last commit made durable."""
        for item in items:
            if item.qos == 0:
                continue
            if item.connection != self._connection:
                self.counters["stale"] += 1  # redelivered on the new connection; done twice
                continue
            self._client.ack(item.mid, item.qos)
            self.counters["acked"] += 1
        self._last_acked = time.monotonic()

    def _publish(self, out: list[Outgoing]) -> None:
        for message in out:
            self._client.publish(message.topic, message.payload, qos=message.qos)


class ConsumerThread:
    """An ``IngestConsumer`` running in the background: for tests and embedding.

    ``start()`` returns once the subscription is in place; ``stop()`` flushes and disconnects.
    """

    def __init__(self, settings: Settings, processor: IngestProcessor | None = None) -> None:
        self.settings = settings
        self.processor = processor or build_processor(settings)
        self.consumer: IngestConsumer | None = None

    def start(self, timeout: float = 10.0) -> ConsumerThread:
        """Start and wait until subscribed; raise if that does not happen in ``timeout``."""
        self.consumer = IngestConsumer(self.settings, self.processor)
        self.consumer.start()
        if not self.consumer.connected.wait(timeout):
            self.stop()
            raise RuntimeError("ingest consumer did not subscribe")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the consumer to stop, wait for its final flush, disconnect."""
        if self.consumer is not None:
            self.consumer.stop(timeout)

    def __enter__(self) -> ConsumerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
