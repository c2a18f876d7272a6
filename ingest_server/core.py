"""The running server: ingest, device messages, clip checks, the scheduler and the HTTP API in
one asyncio process, wired together once (STYLE.md: one typed config, passed down).

Two roles (docs/deployment.md): ``all`` (``classcam-server run``) is the whole server;
``ingest`` (``classcam-server ingest``) is one more ingest worker on the broker's shared
subscription: the consumer with device messages and clip checks, no scheduler and no API. A
worker recomputes the verdicts of the sessions its messages changed itself (the scheduler is in
another process), and the scheduler learns of devices come back online from
``presence_changes`` (``Scheduler.tick``), whichever worker heard them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import uvicorn

from common.clock import Clock, SystemClock
from ingest_server import audit
from ingest_server.api.app import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.clip_checks import ClipChecker
from ingest_server.consumer import IngestConsumer
from ingest_server.db import make_engine, make_session_factory
from ingest_server.device_messages import DeviceMessages
from ingest_server.ingest import IngestProcessor
from ingest_server.metrics import LiveIngest
from ingest_server.scheduler import Scheduler, make_scheduler_client
from ingest_server.settings import Settings
from ingest_server.stores import open_store
from ingest_server.uploads.reaper import UploadReaper
from ingest_server.verdicts import VerdictKeeper

log = logging.getLogger(__name__)

Role = Literal["all", "ingest"]


class ServerCore:
    """Every server part, built from one ``Settings``; ``role`` says who hears that sessions
    changed: the scheduler's next tick (``all``) or this process at once (``ingest``)."""

    def __init__(self, settings: Settings, clock: Clock | None = None, role: Role = "all") -> None:
        self.settings = settings
        self.role = role
        self.clock = clock or SystemClock()
        self._changed: set[str] = set()
        self._changed_lock = threading.Lock()
        self._recomputing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verdicts")
        self.engine = make_engine(settings.database_url)
        self.session_factory = make_session_factory(
            self.engine, audit.load_key(settings.audit_key_file), self.clock
        )
        self.store = open_store(settings)
        self.verdicts = VerdictKeeper(self.session_factory, settings, self.clock)
        self.fleet = DeviceMessages(
            self.session_factory,
            settings.heartbeat_timeout_s,
            self.clock,
            on_sessions_changed=self.sessions_changed,
            on_online=self.device_online,
            batched=True,  # committed by the processor's flush, before the consumer acks
        )
        self.checker = ClipChecker(
            self.session_factory,
            self.store,
            self.sessions_changed,
            self.clock,
            # Staging in the database means several workers: each decodes its own clips.
            others_after_s=settings.clip_check_adopt_s if settings.staging == "database" else None,
        )
        self.processor = IngestProcessor(
            self.session_factory,
            self.store,
            settings,
            self.clock,
            device_messages=self.fleet.handle,
            on_clip_stored=self.checker.clip_stored,
            flush_device_messages=self.fleet.flush,
        )
        self.scheduler = Scheduler(
            settings,
            self.session_factory,
            self.fleet,
            self.verdicts.recompute,
            self.clock,
            on_tick=self._tick,
        )
        # Uploads nobody finishes are reaped from the scheduler's tick, off the ingest thread.
        self.reaper = UploadReaper(self.session_factory, self.store, settings, self.clock)
        # Checks left pending by a crash or a stop run now.
        self.checker.wake()

    def _tick(self) -> None:
        self.checker.wake()
        try:
            self.reaper.maybe_run()
        except Exception:  # the next pass tries again; scheduling must go on
            log.exception("reaping stale uploads failed")

    def sessions_changed(self, session_ids: set[str]) -> None:
        # Verdicts are recomputed off the ingest thread: on the scheduler's next tick, or in
        # an ingest worker (no scheduler here) by a thread of its own.
        if self.role == "all":
            self.scheduler.sessions_changed(session_ids)
            return
        with self._changed_lock:
            first = not self._changed
            self._changed |= session_ids
        if first:
            self._recomputing.submit(self._recompute_changed)

    def _recompute_changed(self) -> None:
        with self._changed_lock:
            changed, self._changed = self._changed, set()
        try:
            self.verdicts.recompute(changed)
        except Exception:  # the scheduler's periodic pass over pending sessions catches up
            log.exception("recomputing %d verdict(s) failed", len(changed))

    def device_online(self, device_id: str) -> None:
        self.scheduler.device_online(device_id)

    def api_context(self, consumer: IngestConsumer | None = None) -> ApiContext:
        """What the API routes need; with ``consumer``, /metrics also shows its counters."""
        live = None if consumer is None else LiveIngest(consumer, self.processor, self.fleet)
        return ApiContext(
            self.settings,
            self.session_factory,
            self.store,
            recompute=self.verdicts.recompute,
            send_command=self.scheduler.send_command,
            clock=self.clock,
            live_ingest=live,
        )

    def close(self) -> None:
        self.checker.close()  # first: a check finishing now still reports its sessions
        self._recomputing.shutdown(wait=True)
        self.store.close()
        self.engine.dispose()


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: our stop event, not uvicorn, owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_server(
    settings: Settings,
    stop: asyncio.Event,
    clock: Clock | None = None,
    consumer_class: type[IngestConsumer] = IngestConsumer,
    role: Role = "all",
) -> None:
    """Ingest, schedule and serve the API until ``stop`` is set, on ``clock`` (the system
    clock unless given: a replay passes its shared simulated clock); only ingest in the
    ``ingest`` role. ``consumer_class`` lets a bench time the real consumer
    (bench/heartbeat_ingest.py)."""
    core = ServerCore(settings, clock, role)
    consumer = consumer_class(settings, core.processor)
    # Heartbeat timeouts wait until the backlog at the broker is drained.
    core.fleet.caught_up = consumer.caught_up
    if role == "ingest":
        try:
            await consumer.run(stop)
        finally:
            core.close()
        return
    api: _EmbeddedServer | None = None
    if settings.api_port:
        api = _EmbeddedServer(
            uvicorn.Config(
                create_app(core.api_context(consumer)),
                host=settings.api_host,
                port=settings.api_port,
                log_level="warning",
                access_log=False,
            )
        )

    async def stop_api() -> None:
        await stop.wait()
        if api is not None:
            api.should_exit = True

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(consumer.run(stop), name="ingest")
            group.create_task(
                core.scheduler.run(lambda: make_scheduler_client(settings), stop),
                name="scheduler",
            )
            if api is not None:
                group.create_task(api.serve(), name="api")
                group.create_task(stop_api(), name="api-stop")
                log.info("API on http://%s:%s/api/v1", settings.api_host, settings.api_port)
    finally:
        core.close()
