"""The MQTT side of ingest: take device messages off the broker, feed the processor, send acks.

One aiomqtt client with a persistent session (3.1.1 ``clean_session=False``; 5 ``clean_start``
False plus a session expiry), so device messages wait at the broker while the server is down.
Messages are handed to ``IngestProcessor`` in batches on one worker thread (database and disk
work must not block the event loop); the processor is flushed (group commit) when the queue runs
dry or every ``flush_every_messages`` / ``flush_interval_s``, and acks are published at QoS 1.

aiomqtt acknowledges a QoS 1 message to the broker as soon as it is queued here, so a crash can
lose what sat in the queue. That is safe by design: only a durable ``complete`` lets a device
forget a clip, and a device that hears nothing re-sends ``init`` and learns what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common import topics
from common.clock import SystemClock
from ingest_server.db import make_engine, make_session_factory
from ingest_server.ingest import IngestProcessor, Outgoing
from ingest_server.settings import Settings
from ingest_server.store import EvidenceStore

log = logging.getLogger(__name__)

MAX_BATCH = 64


def backoff_delay(
    attempt: int, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): capped exponential, full jitter."""
    return min(cap, base * (2 ** min(attempt, 30))) * (0.5 + 0.5 * rng())


def build_processor(settings: Settings) -> IngestProcessor:
    """A processor on the settings' database and evidence store, with the system clock."""
    engine = make_engine(settings.database_url)
    store = EvidenceStore(settings.evidence_dir)
    return IngestProcessor(make_session_factory(engine), store, settings, SystemClock())


def make_client(settings: Settings) -> aiomqtt.Client:
    """The server's aiomqtt client with a persistent session; call inside the event loop."""
    v5 = settings.mqtt_protocol == "5"
    kwargs: dict[str, Any] = {}
    if v5:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = settings.mqtt_session_expiry_s
        # aiomqtt's default is a clean start on the first connection, which would throw away
        # whatever devices sent while the server was down.
        kwargs.update(clean_start=False, properties=properties)
    else:
        kwargs.update(clean_session=False)
    return aiomqtt.Client(
        settings.mqtt_host,
        settings.mqtt_port,
        username=settings.mqtt_username,
        password=settings.mqtt_secret(),
        identifier=settings.mqtt_client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        keepalive=settings.mqtt_keepalive_s,
        **kwargs,
    )


class IngestConsumer:
    """Runs ``processor`` on every message of ``up/#`` until a stop event is set."""

    def __init__(self, settings: Settings, processor: IngestProcessor) -> None:
        self.settings = settings
        self.processor = processor
        self.connected = asyncio.Event()
        self.connections = 0
        self.errors = 0
        # One thread, always the same: the processor is not thread-safe, and SQLite
        # connections are happiest on the thread that made them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        self._since_flush = 0
        self._last_flush = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, consume, reconnect with backoff; return once ``stop`` is set."""
        client = make_client(self.settings)
        attempt = 0
        try:
            while not stop.is_set():
                try:
                    async with client:
                        attempt = 0
                        self.connections += 1
                        await self._consume(client, stop)
                except aiomqtt.MqttError as exc:
                    self.connected.clear()
                    delay = backoff_delay(attempt)
                    attempt += 1
                    log.warning("broker connection lost (%s); retrying in %.1f s", exc, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            self.connected.clear()
            # Whatever was written but not yet durable: make it so before we go.
            await self._in_thread(self.processor.flush)
            self._executor.shutdown(wait=True)

    async def _consume(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        subscription = topics.up_all(self.settings.shared_group)
        await client.subscribe(subscription, qos=1)
        log.info("subscribed to %s as %s", subscription, self.settings.mqtt_client_id)
        self.connected.set()
        messages = client.messages
        while not stop.is_set():
            first = await self._next_message(messages, stop)
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH and len(messages) > 0:
                batch.append(await anext(messages))
            idle = len(messages) == 0
            acks = await self._in_thread(self._process, batch, idle)
            await self._publish(client, acks)
        acks = await self._in_thread(self.processor.flush)
        await self._publish(client, acks)

    async def _next_message(
        self, messages: aiomqtt.MessagesIterator, stop: asyncio.Event
    ) -> aiomqtt.Message | None:
        """The next message, or None once ``stop`` is set (never cancels a batch midway)."""
        if len(messages) > 0:
            return await anext(messages)
        getter = asyncio.ensure_future(anext(messages))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await getter
        return None

    def _process(self, batch: list[aiomqtt.Message], idle: bool) -> list[Outgoing]:
        """Runs on the worker thread: handle a batch, flush when due."""
        out: list[Outgoing] = []
        for message in batch:
            try:
                out.extend(self.processor.handle(message.topic.value, bytes(message.payload)))
            except Exception:
                # A bug or a database outage must not stop ingest: the device will retry.
                self.errors += 1
                log.exception("failed to process a message on %s", message.topic.value)
        self._since_flush += len(batch)
        now = time.monotonic()
        if (
            idle
            or self._since_flush >= self.settings.flush_every_messages
            or now - self._last_flush >= self.settings.flush_interval_s
        ):
            try:
                out.extend(self.processor.flush())
            except Exception:
                self.errors += 1
                log.exception("flush failed; will retry")
            self._since_flush = 0
            self._last_flush = now
        return out

    async def _publish(self, client: aiomqtt.Client, acks: list[Outgoing]) -> None:
        if acks:
            await asyncio.gather(*(client.publish(a.topic, a.payload, qos=a.qos) for a in acks))

    async def _in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)


class ConsumerThread:
    """An ``IngestConsumer`` on its own event loop in a thread: for tests and embedding.

    ``start()`` returns once the subscription is in place; ``stop()`` flushes and joins.
    """

    def __init__(self, settings: Settings, processor: IngestProcessor | None = None) -> None:
        self.settings = settings
        self.processor = processor or build_processor(settings)
        self.consumer: IngestConsumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="ingest-consumer", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()/stop()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.consumer = IngestConsumer(self.settings, self.processor)
        watcher = asyncio.create_task(self._signal_ready(self.consumer))
        try:
            await self.consumer.run(self._stop)
        finally:
            watcher.cancel()

    async def _signal_ready(self, consumer: IngestConsumer) -> None:
        await consumer.connected.wait()
        self._ready.set()

    def start(self, timeout: float = 10.0) -> ConsumerThread:
        """Start and wait until subscribed; raise if that does not happen in ``timeout``."""
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"ingest consumer did not subscribe: {self._error!r}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the consumer to stop, wait for its final flush, join the thread."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            # RuntimeError: the loop ended on its own meanwhile.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> ConsumerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
