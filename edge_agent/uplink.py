"""The agent's MQTT link and the resumable, verified upload of outbox clips (DESIGN.md §1 step 5).

One paho client per process (paho is light and lets us bound in-flight QoS 1 messages). The
upload of one clip is a conversation with the server:

1. ``init`` (the signed manifest) → the server answers with the byte ranges it still needs
   (all of them for a new upload, fewer after a restart or a broken link);
2. the chunks covering those ranges, QoS 1, at most ``window`` unacknowledged at the broker,
   paced by a rate limit so heartbeats and commands keep room on a thin link;
3. ``fin`` → ``complete`` (the clip is verified, stored and recorded: delete it), ``missing``
   (send those ranges again, then ``fin`` again) or ``rejected`` (keep it, stop trying).

Each pass over the outbox gives every clip due one bounded attempt, least recently tried
first. An attempt that ends without ``complete`` (a silent server, a broken link, a refusal that
can pass — ``RETRYABLE_REJECTIONS`` — or a ``fin`` answered with no fewer missing bytes than
before) is charged to that clip, which waits in the outbox with capped, jittered exponential
backoff kept on disk while the other clips go on. After ``max_attempts`` the clip is parked:
kept, tried every ``parked_retry_s``, reported in the heartbeat. An attempt that made progress
(the server lacks fewer bytes than it ever said) unparks the clip with a fresh budget, and a clip
completing makes the parked ones due at once (``Outbox.attempt_failed``, ``mark_complete``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import random
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common import topics
from common.clock import Clock, SystemClock, wait_event
from common.errors import ProtocolError
from common.ranges import chunk_offsets
from common.schemas import (
    RETRYABLE_REJECTIONS,
    Ack,
    AckReplyTo,
    AckState,
    Fin,
    Status,
    StatusState,
    decode,
)
from edge_agent.config import AgentConfig, UploadConfig
from edge_agent.outbox import Outbox, OutboxItem

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


class LinkDown(Exception):
    """The broker connection went away while a message was being sent."""


class MqttLink:
    """The device's one MQTT connection: persistent session, retained presence, its down/ topics."""

    def __init__(
        self,
        config: AgentConfig,
        password: str,
        clock: Clock | None = None,
        firmware: str = "classcam-agent",
    ) -> None:
        self.config = config
        self.device_id = config.device_id
        self.clock = clock or SystemClock()
        self.firmware = firmware
        self.connected = threading.Event()
        self.handlers: dict[str, MessageHandler] = {}
        self.counters: Counter[str] = Counter()
        # Called with the bytes each publish puts on the wire (payload, topic, MQTT header).
        self.on_sent: Callable[[int], None] | None = None
        # Called each time the link is up (connected and subscribed).
        self.on_connected: Callable[[], None] | None = None
        broker = config.broker
        v5 = broker.protocol == "5"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            # 3.1.1: the session (subscriptions, queued acks and commands) outlives the link.
            clean_session=None if v5 else False,
        )
        self.client.username_pw_set(self.device_id, password)
        self.client.max_inflight_messages_set(config.upload.window)
        self.client.reconnect_delay_set(int(broker.reconnect_min_s), int(broker.reconnect_max_s))
        if broker.tls:
            self.client.tls_set(ca_certs=str(broker.ca_file) if broker.ca_file else None)
        will = Status(device_id=self.device_id, state=StatusState.OFFLINE, firmware=firmware)
        self.client.will_set(topics.status(self.device_id), will.to_bytes(), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> None:
        """Connect in the background; paho reconnects with backoff for as long as we run."""
        broker = self.config.broker
        kwargs: dict[str, object] = {}
        if broker.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = broker.session_expiry_s
            kwargs = {"clean_start": False, "properties": props}
        self.client.connect_async(broker.host, broker.port, broker.keepalive_s, **kwargs)  # type: ignore[arg-type]
        self.client.loop_start()

    def stop(self) -> None:
        """Say ``offline`` ourselves (a clean stop fires no will), then disconnect."""
        if self.connected.is_set():
            status = Status(
                device_id=self.device_id,
                state=StatusState.OFFLINE,
                at=self.clock.now(),
                firmware=self.firmware,
            )
            info = self.client.publish(topics.status(self.device_id), status.to_bytes(), 1, True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(2.0)
        self.client.disconnect()
        self.client.loop_stop()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self.connected.wait(timeout)

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Publish; ``LinkDown`` when there is no connection to publish on."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            raise LinkDown(topic)
        if self.on_sent is not None:
            self.on_sent(len(payload) + len(topic) + 6)
        return info

    def on(self, suffix: str, handler: MessageHandler) -> None:
        """Route messages on ``classcam/v1/down/{device}/{suffix}`` to ``handler``."""
        self.handlers[suffix] = handler

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason_code: mqtt.ReasonCode,
        properties: object,
    ) -> None:
        if reason_code.is_failure:
            log.warning("broker refused connection: %s", reason_code)
            self.counters["connect_refused"] += 1
            return
        log.info("connected to %s:%s", self.config.broker.host, self.config.broker.port)
        self.counters["connects"] += 1
        client.subscribe(topics.down_all(self.device_id), qos=1)
        status = Status(
            device_id=self.device_id,
            state=StatusState.ONLINE,
            at=self.clock.now(),
            firmware=self.firmware,
        )
        client.publish(topics.status(self.device_id), status.to_bytes(), qos=1, retain=True)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[mqtt.ReasonCode],
        properties: object,
    ) -> None:
        # Connected means subscribed: on a first connection, a command sent before the
        # broker has our subscription would find no session to wait in.
        if all(not rc.is_failure for rc in reason_codes):
            self.connected.set()
            if self.on_connected is not None:
                self.on_connected()
        else:
            self.counters["subscribe_refused"] += 1
            log.error("broker refused our subscription: %s", reason_codes)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason_code: mqtt.ReasonCode,
        properties: object,
    ) -> None:
        if self.connected.is_set():
            log.warning("disconnected from broker: %s", reason_code)
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        prefix = f"{topics.DOWN}/{self.device_id}/"
        suffix = message.topic[len(prefix) :] if message.topic.startswith(prefix) else ""
        handler = self.handlers.get(suffix)
        if handler is None:
            self.counters["unhandled_message"] += 1
            log.warning("no handler for %s", message.topic)
            return
        try:
            handler(message.topic, bytes(message.payload))
        except Exception:  # a bad message must never kill paho's network thread
            self.counters["handler_error"] += 1
            log.exception("handling %s failed", message.topic)


class RateLimiter:
    """A token bucket over bytes; ``rate`` 0 means unlimited."""

    def __init__(self, rate: int, clock: Clock, burst: int | None = None) -> None:
        self.rate = rate
        self.clock = clock
        self.capacity = burst or max(rate, 1)
        self.tokens = float(self.capacity)
        self.last = clock.monotonic()

    def take(self, amount: int) -> None:
        if self.rate <= 0:
            return
        now = self.clock.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= amount
        if self.tokens < 0:
            self.clock.sleep(-self.tokens / self.rate)


def refusal_backoff(refusals: int, min_s: float, max_s: float, jitter: float) -> float:
    """Seconds to wait after the ``refusals``-th refusal in a row that can pass: doubling from
    ``min_s``, capped at ``max_s``, scaled by ``jitter`` (drawn from [0.5, 1]) so devices
    refused together do not come back together."""
    doublings = min(max(refusals, 1) - 1, 62)
    return min(max_s, min_s * 2.0**doublings) * jitter


@dataclass
class UploadStats:
    inits: int = 0
    fins: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0
    completed: int = 0
    rejected: int = 0
    deferred: int = 0
    failed_attempts: int = 0  # attempts that ended without a final state
    parked: int = 0  # clips that spent their attempt budget (this run)


def _gap(ack: Ack) -> int:
    """How many bytes the server says it still lacks."""
    return sum(end - start for start, end in ack.missing)


class Uploader:
    """Drives outbox clips through init → chunks → fin until ``complete`` or ``rejected``."""

    def __init__(
        self,
        link: MqttLink,
        outbox: Outbox,
        config: UploadConfig,
        clock: Clock | None = None,
        *,
        on_ack: Callable[[Ack], None] | None = None,
        on_complete: Callable[[str], None] | None = None,
        on_exchange: Callable[[Ack, float, float], None] | None = None,
    ) -> None:
        self.link = link
        self.on_ack = on_ack
        # (answer, monotonic send time of our init/fin, monotonic receive time of the answer):
        # a timed exchange, the one kind of server time the clock offset may learn from.
        self.on_exchange = on_exchange
        self.on_complete = on_complete
        self.outbox = outbox
        self.config = config
        self.clock = clock or SystemClock()
        self.stats = UploadStats()
        self.limiter = RateLimiter(config.rate_limit_bytes_per_s, self.clock)
        self._acks: dict[str, queue.Queue[tuple[Ack, float]]] = {}
        self._lock = threading.Lock()
        link.on("ack", self.on_ack_message)

    def on_ack_message(self, topic: str, payload: bytes) -> None:
        """Called on paho's thread for every message on our ack topic."""
        received = self.clock.monotonic()
        try:
            ack = decode(Ack, payload)
        except ProtocolError as exc:
            self.link.counters["bad_ack"] += 1
            log.warning("ignoring bad ack: %s", exc)
            return
        if self.on_ack is not None:
            self.on_ack(ack)
        with self._lock:
            waiting = self._acks.get(ack.upload_id)
        if waiting is None:
            log.debug("ack for %s, which no upload waits for", ack.upload_id)
            return
        waiting.put((ack, received))

    def _wait_ack(
        self, upload_id: str, answer_to: AckReplyTo, sent: float | None = None
    ) -> Ack | None:
        """The server's answer to our ``init`` or ``fin`` (sent at monotonic ``sent``); chunk
        complaints are logged."""
        deadline = self.clock.monotonic() + self.config.ack_timeout_s
        waiting = self._acks[upload_id]
        while (left := deadline - self.clock.monotonic()) > 0:
            try:
                ack, received = waiting.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if sent is not None and received < sent and ack.state == AckState.MISSING:
                # The answer to an earlier (or duplicated) init or fin, queued before we
                # asked: it says nothing about what the server holds now.
                continue
            if ack.reply_to == answer_to or ack.state == AckState.REJECTED:
                # An answer queued before we asked is stale: it times nothing.
                if self.on_exchange is not None and sent is not None and received >= sent:
                    self.on_exchange(ack, sent, received)
                return ack
            if ack.reason:
                log.warning(
                    "upload %s: server refused a chunk: %s %s",
                    upload_id,
                    ack.reason,
                    ack.detail or "",
                )
        return None

    def upload(self, item: OutboxItem, stop: threading.Event | None = None) -> AckState | None:
        """One bounded attempt at a clip: its final state, or ``None`` if stopped or if the
        attempt failed (the clip then waits in the outbox for its next turn)."""
        stop = stop or threading.Event()
        with self._lock:
            self._acks[item.upload_id] = queue.Queue()
        try:
            return self._attempt(item, stop)
        finally:
            with self._lock:
                self._acks.pop(item.upload_id, None)

    def _attempt(self, item: OutboxItem, stop: threading.Event) -> AckState | None:
        device = self.link.device_id
        # No link, no attempt: a clip is not charged for the broker being away.
        while not self.link.wait_connected(timeout=1.0):
            if stop.is_set():
                return None
        attempts = self.outbox.note_attempt(item.upload_id)
        progressed = False
        try:
            sent = self.clock.monotonic()
            self.link.publish(topics.file_init(device, item.upload_id), item.manifest_payload)
            self.stats.inits += 1
            ack = self._wait_ack(item.upload_id, AckReplyTo.INIT, sent)
            missing = item.size + 1  # more than any answer can say
            while ack is not None and ack.state == AckState.MISSING and not stop.is_set():
                now_missing = _gap(ack)
                if now_missing >= missing:
                    # The server got every byte we had for those ranges and still cannot
                    # finish (a hash that never matches, a store that fails): try later.
                    self._failed(item, attempts, "no_progress", progressed=progressed)
                    return None
                # Fewer bytes missing than the server ever said: bytes got across, in this
                # attempt or in one cut short before it (a flaky link): the clip is moving.
                new_low = self.outbox.note_missing(item.upload_id, now_missing)
                progressed = progressed or new_low or missing <= item.size
                missing = now_missing
                self._send_ranges(item, ack.missing, stop)
                fin = Fin(upload_id=item.upload_id, size=item.size, sha256=item.sha256)
                sent = self.clock.monotonic()
                self.link.publish(topics.file_fin(device, item.upload_id), fin.to_bytes())
                self.stats.fins += 1
                ack = self._wait_ack(item.upload_id, AckReplyTo.FIN, sent)
                if ack is not None and ack.state == AckState.MISSING and _gap(ack) >= missing:
                    # Perhaps the answer to a duplicated earlier fin, still in flight when
                    # this one left; the answer to this one may follow.
                    ack = self._wait_ack(item.upload_id, AckReplyTo.FIN, sent) or ack
        except LinkDown:
            log.info("link down during upload %s; will resume", item.upload_id)
            ack = None
        if stop.is_set():
            return None
        if ack is None:
            self._failed(item, attempts, "no_answer", progressed=progressed)
            return None
        if ack.state == AckState.COMPLETE:
            self.outbox.mark_complete(item.upload_id)
            self.stats.completed += 1
            if self.on_complete is not None:
                self.on_complete(item.upload_id)
            log.info("upload %s complete (%d bytes)", item.upload_id, item.size)
            return AckState.COMPLETE
        if ack.state == AckState.REJECTED and ack.reason in RETRYABLE_REJECTIONS:
            assert ack.reason is not None
            self.stats.deferred += 1
            detail = f"{ack.reason.value} {ack.detail or ''}".strip()
            self._failed(item, attempts, ack.reason.value, detail=detail, refused=True)
            return None
        if ack.state == AckState.REJECTED:
            reason = ack.reason.value if ack.reason else "rejected"
            self.outbox.mark_rejected(item.upload_id, reason)
            self.stats.rejected += 1
            log.error("upload %s rejected: %s %s", item.upload_id, reason, ack.detail or "")
            return AckState.REJECTED
        self._failed(item, attempts, "no_answer", progressed=progressed)
        return None

    def _failed(
        self,
        item: OutboxItem,
        attempts: int,
        reason: str,
        *,
        detail: str | None = None,
        refused: bool = False,
        progressed: bool = False,
    ) -> None:
        """Charge a failed attempt to the clip: it waits for its next turn, or is parked."""
        current = self.outbox.get(item.upload_id) or item
        # A refusal backs off by refusals in a row; other failures by attempts spent. An
        # attempt that got bytes across was cut short, not refused: come back soon.
        count = current.refusals + 1 if refused else (1 if progressed else attempts)
        jitter = random.uniform(0.5, 1.0)
        delay = refusal_backoff(count, self.config.retry_min_s, self.config.retry_max_s, jitter)
        at = self.outbox.attempt_failed(
            item.upload_id,
            reason,
            timedelta(seconds=delay),
            max_attempts=self.config.max_attempts,
            parked_delay=timedelta(seconds=self.config.parked_retry_s * jitter),
            refused=refused,
            progressed=progressed,
        )
        self.stats.failed_attempts += 1
        self.link.counters["upload_attempt_failed"] += 1
        parked = self.outbox.get(item.upload_id)
        if parked is not None and parked.parked and not current.parked:
            self.stats.parked += 1
            self.link.counters["upload_parked"] += 1
            log.error(
                "upload %s parked after %d attempts (%s); kept, next try at %s",
                item.upload_id,
                attempts,
                detail or reason,
                at.isoformat(),
            )
        else:
            log.warning(
                "upload %s attempt %d failed (%s); next attempt at %s",
                item.upload_id,
                attempts,
                detail or reason,
                at.isoformat(),
            )

    def _send_ranges(
        self, item: OutboxItem, ranges: list[tuple[int, int]], stop: threading.Event
    ) -> None:
        """Publish every chunk that overlaps ``ranges``, keeping at most ``window`` in flight."""
        device = self.link.device_id
        in_flight: deque[mqtt.MQTTMessageInfo] = deque()
        offsets = chunk_offsets(ranges, item.size, item.chunk_size)
        fd = os.open(item.path, os.O_RDONLY)
        try:
            for offset in offsets:
                if stop.is_set():
                    return
                data = os.pread(fd, item.chunk_size, offset)
                self.limiter.take(len(data))
                in_flight.append(
                    self.link.publish(topics.file_chunk(device, item.upload_id, offset), data)
                )
                self.stats.chunks_sent += 1
                self.stats.bytes_sent += len(data)
                while len(in_flight) >= self.config.window:
                    self._wait_published(in_flight.popleft())
            while in_flight:
                self._wait_published(in_flight.popleft())
        finally:
            os.close(fd)

    def _wait_published(self, info: mqtt.MQTTMessageInfo) -> None:
        try:
            info.wait_for_publish(self.config.ack_timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise LinkDown(str(exc)) from exc
        if not info.is_published():
            raise LinkDown("broker did not acknowledge a chunk in time")

    def drain(self, stop: threading.Event | None = None) -> int:
        """Give every clip due now one attempt, in turn (a clip waiting for its retry is passed
        over, not waited for); return how many reached a final state."""
        stop = stop or threading.Event()
        done = 0
        due = self.outbox.due(
            timedelta(seconds=self.config.retry_max_s),
            timedelta(seconds=self.config.parked_retry_s),
        )
        for item in due:
            # Only the link going away stops a pass: nothing can be tried without it, and
            # charging the clips for it would park them all during an outage.
            if stop.is_set() or not self.link.wait_connected(timeout=1.0):
                break
            try:
                state = self.upload(item, stop)
            except FileNotFoundError:
                # Nothing left to send, ever: say so instead of retrying it forever.
                log.error("upload %s: its file %s is gone", item.upload_id, item.path)
                self.outbox.mark_rejected(item.upload_id, "file_missing")
                self.stats.rejected += 1
                state = AckState.REJECTED
            if state is not None:
                done += 1
        return done

    def run(
        self, stop: threading.Event, idle_s: float = 1.0, wake: threading.Event | None = None
    ) -> None:
        """Keep the outbox empty until ``stop`` is set, looking at it every ``idle_s`` clock
        seconds; with ``wake`` (set when there is new work: a clip queued, the link back, and
        at the stop), every ``idle_s`` real seconds and when the next retry is due instead, so
        a replay's faster clock does not make an idle device read its outbox more often."""
        while not stop.is_set():
            if wake is not None:
                wake.clear()
            try:
                if self.drain(stop):
                    continue
            except Exception:  # one bad clip or a disk error must not end all uploads
                self.link.counters["upload_error"] += 1
                log.exception("uploader failed; retrying")
            if wake is None:
                wait_event(stop, idle_s, self.clock)
            else:
                wait_event(wake, self._idle_wait_s(idle_s), self.clock, real_limit_s=idle_s)

    def _idle_wait_s(self, idle_s: float) -> float:
        """Clock seconds until the next retry is due, never less than ``idle_s``."""
        due_at = self.outbox.next_due_at()
        if due_at is None:
            return math.inf
        return max(idle_s, (due_at - self.clock.now()).total_seconds())
