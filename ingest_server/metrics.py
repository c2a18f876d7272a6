"""What ``GET /metrics`` shows Prometheus: the running ingest's counters and a few cheap counts
from the database, read at scrape time by one custom collector (``prometheus_client``).

Two sources, on purpose:

- **Live counters** of this process (``LiveIngest``: the consumer, the processor and the device
  messages of ``core.run_server``), counted since it started: messages by kind, chunks, bytes,
  uploads, commits, dead letters, refused device messages, the ingest lag. Absent where no
  ingest runs in the process (an API on its own).
- **The database**, for what must survive a restart or span every ingest worker: refused
  upload messages by reason (``rejection_counts``), devices by presence (``device_health``),
  recent sessions by verdict, and the feed's newest entry. Each query is bounded by the fleet,
  by a time range on an indexed column, or by a primary key lookup, so a scrape costs the same
  in the tenth year as in the first.

Counters are read without a lock: each is copied whole (``dict()`` of a ``Counter`` is one C
call under the GIL), so a scrape sees every counter as it was at some instant of the scrape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from common import topics
from common.clock import Clock
from ingest_server.consumer import IngestConsumer
from ingest_server.db import SessionFactory, reader_factory
from ingest_server.device_messages import DeviceMessages
from ingest_server.ingest import IngestProcessor
from ingest_server.models import (
    ClassSession,
    Device,
    DeviceHealth,
    FeedEvent,
    RejectionCount,
)
from ingest_server.rules.verdict import VerdictState

__all__ = ["PREFIX", "RECENT_SESSIONS", "LiveIngest", "ServerCollector", "metrics_registry"]

PREFIX = "classcam"
# Sessions by verdict are counted over those scheduled from this long ago on (the upcoming
# ones included): an indexed range whose size follows the timetable, not the years behind it.
RECENT_SESSIONS = timedelta(days=30)
# The processor's work (``IngestProcessor.stats``) that /metrics shows, by metric name.
PROCESSOR_STATS = {
    "upload_chunks": ("chunks", "Upload chunks received to stage (duplicates not counted)."),
    "upload_bytes": ("bytes", "Bytes of upload chunks received to stage."),
    "upload_duplicate_chunks": ("duplicate_chunks", "Chunks received again and ignored."),
    "uploads_started": ("uploads_started", "Uploads begun by an accepted init."),
    "uploads_completed": ("uploads_complete", "Uploads assembled, verified and stored."),
    "uploads_rejected": (
        "uploads_rejected",
        "Inits and fins answered rejected (the reasons: classcam_rejections_total); a device "
        "retrying a retryable refusal counts each time.",
    ),
}


@dataclass(frozen=True, slots=True)
class LiveIngest:
    """The ingest parts running in this process, whose in-memory counters /metrics reads."""

    consumer: IngestConsumer
    processor: IngestProcessor
    fleet: DeviceMessages


def _snapshot(counter: Counter[str]) -> dict[str, int]:
    # dict() of a Counter copies it in one C call: no "changed size during iteration" when
    # the ingest thread adds a key meanwhile.
    return dict(counter)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _labelled_counter(
    name: str, doc: str, label: str, values: Iterable[tuple[str, float]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    for key, value in sorted(values):
        family.add_metric([key], value)
    return family


def _labelled_gauge(
    name: str, doc: str, label: str, values: Iterable[tuple[str, float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    for key, value in sorted(values):
        family.add_metric([key], value)
    return family


def device_message_refusals(fleet: dict[str, int], processor: dict[str, int]) -> dict[str, int]:
    """Device messages refused outside the upload protocol, by reason: statuses, heartbeats
    and events that do not parse (``bad_<kind>``) or name another device
    (``<kind>_device_mismatch``), and messages on a topic that names no device (``bad_topic``)."""
    refused = {
        key: value
        for key, value in fleet.items()
        if key.startswith("bad_") or key.endswith("_device_mismatch")
    }
    refused["bad_topic"] = processor.get("bad_topic", 0)
    return refused


class ServerCollector(Collector):
    """Reads the live counters and the database at each scrape (see the module's docstring)."""

    def __init__(
        self, session_factory: SessionFactory, clock: Clock, live: LiveIngest | None = None
    ) -> None:
        self.session_factory = session_factory
        self.clock = clock
        self.live = live

    def collect(self) -> Iterator[Metric]:
        if self.live is not None:
            yield from self._live(self.live)
        yield from self._database()

    def _live(self, live: LiveIngest) -> Iterator[Metric]:
        consumer = _snapshot(live.consumer.counters)
        messages = _snapshot(live.processor.messages)
        stats = _snapshot(live.processor.stats)
        refusals = _snapshot(live.processor.counters)
        fleet = _snapshot(live.fleet.counters)
        yield _counter(
            "ingest_messages_received",
            "Messages taken off the broker by the ingest consumer.",
            consumer.get("received", 0),
        )
        yield _counter(
            "ingest_messages_acked",
            "Messages acknowledged to the broker, each after the commit that made it durable.",
            consumer.get("acked", 0),
        )
        yield _labelled_counter(
            "ingest_messages",
            "Device messages handled, by topic kind.",
            "kind",
            ((kind.value, messages.get(kind.value, 0)) for kind in topics.UpKind),
        )
        for name, (key, doc) in PROCESSOR_STATS.items():
            yield _counter(name, doc, stats.get(key, 0))
        yield _counter(
            "ingest_commits",
            "Group commits (flushes) that committed.",
            consumer.get("flushes", 0),
        )
        yield _counter(
            "ingest_commit_failures",
            "Group commits that failed and were retried (nothing acknowledged meanwhile).",
            consumer.get("flush_failed", 0),
        )
        yield _counter(
            "ingest_handle_failures",
            "Attempts to handle a message that raised (retried, or kept as a dead letter).",
            consumer.get("handle_failed", 0),
        )
        yield _labelled_counter(
            "ingest_dead_letters",
            "Messages kept in dead_letters and acknowledged: a message that kept failing "
            "(stage=message) or a status or heartbeat its group commit set aside (stage=batch).",
            "stage",
            [
                ("message", consumer.get("dead_lettered", 0)),
                ("batch", fleet.get("dead_lettered", 0)),
            ],
        )
        yield _labelled_counter(
            "device_message_refusals",
            "Statuses, heartbeats and events refused, and messages on a topic naming no device, "
            "by reason (counted by this process since it started).",
            "reason",
            device_message_refusals(fleet, refusals).items(),
        )
        yield _counter("heartbeats", "Heartbeats recorded.", fleet.get("heartbeats", 0))
        yield GaugeMetricFamily(
            f"{PREFIX}_ingest_connected",
            "1 while the ingest consumer is connected and subscribed to the broker.",
            value=1.0 if live.consumer.connected.is_set() else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_ingest_caught_up",
            "1 once the backlog the broker held at the (re)connect has been handled.",
            value=1.0 if live.consumer.caught_up() else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_ingest_lag_seconds",
            "Seconds since the oldest message received and not yet committed and acknowledged "
            "was received; 0 when none waits. A backlog still at the broker is not in it.",
            value=live.consumer.ingest_lag_s(),
        )

    def _database(self) -> Iterator[Metric]:
        now = self.clock.now()
        with reader_factory(self.session_factory)() as db:
            rejections = db.execute(
                select(RejectionCount.reason, func.sum(RejectionCount.count)).group_by(
                    RejectionCount.reason
                )
            ).all()
            presence = db.execute(
                select(DeviceHealth.status, func.count()).group_by(DeviceHealth.status)
            ).all()
            registered = db.scalar(select(func.count()).select_from(Device)) or 0
            verdicts = db.execute(
                select(ClassSession.verdict, func.count())
                .where(ClassSession.scheduled_start >= now - RECENT_SESSIONS)
                .group_by(ClassSession.verdict)
            ).all()
            newest = db.execute(
                select(FeedEvent.seq, FeedEvent.at).order_by(FeedEvent.seq.desc()).limit(1)
            ).first()
        yield _labelled_counter(
            "rejections",
            "Upload messages refused, by reason, since the database began (rejection_counts: "
            "every ingest worker, across restarts).",
            "reason",
            ((str(reason), float(count or 0)) for reason, count in rejections),
        )
        online = {str(status): float(count) for status, count in presence}
        yield _labelled_gauge(
            "devices",
            "Devices by presence (device_health): online, or offline (a device never heard "
            "from has no row).",
            "status",
            {"online": 0.0, "offline": 0.0, **online}.items(),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_devices_registered", "Devices registered.", value=float(registered)
        )
        yield _labelled_gauge(
            "recent_sessions",
            f"Sessions scheduled in the last {RECENT_SESSIONS.days} days or later, by verdict.",
            "verdict",
            {
                **{state.value: 0.0 for state in VerdictState},
                **{str(verdict): float(count) for verdict, count in verdicts},
            }.items(),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_feed_last_seq",
            "The seq of the newest feed event (a reader's cursor below it is behind).",
            value=float(newest.seq) if newest is not None else 0.0,
        )
        if newest is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_feed_newest_age_seconds",
                "Seconds since the newest feed event was appended (absent while the feed is "
                "empty).",
                value=max(0.0, (now - newest.at).total_seconds()),
            )


def metrics_registry(
    session_factory: SessionFactory, clock: Clock, live: LiveIngest | None = None
) -> CollectorRegistry:
    """A registry of its own (not the process-wide default, so two apps in one process do
    not clash) with the server's collector and the process, platform and GC basics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(session_factory, clock, live))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
