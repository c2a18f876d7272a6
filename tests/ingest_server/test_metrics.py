"""GET /metrics (issue 10, item 6): the running server (``core.run_server``: real consumer on a
real Mosquitto, real SQLite, uvicorn on a real port) takes an upload, a refused upload and
heartbeats from a device, and the scrape, parsed as Prometheus parses it, shows exactly those
counts; nobody scrapes without a token that reads everything. Sessions by verdict are counted
over a bounded range of recent sessions."""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from ingest_helpers import (
    TestUpload,
    make_upload,
    one_room_school,
    quiet_heartbeat,
    server_settings,
    server_thread,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from common import topics
from common.schemas import Ack, AckReplyTo, AckState, decode
from common.signing import generate_private_key, public_key_b64
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.auth import Role, create_token
from ingest_server.db import make_engine, make_session_factory
from ingest_server.models import ClassSession, FeedEvent
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore
from simulators.broker import MosquittoBroker

ACK_TIMEOUT = 10.0
LECTURER_TOKEN = "lecturer-app-token-metrics-0123456789"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape by (name, labels), as Prometheus reads the text."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def setup_doc(device_key: str, starts: dict[str, datetime]) -> dict[str, object]:
    """A school with a classroom camera, a lecturer (with an app token) and sessions starting
    at ``starts``."""
    return one_room_school("dev-1", device_key, LECTURER_TOKEN, starts)


def seed(
    settings: Settings,
    tmp_path: Path,
    device_key: str,
    now: datetime,
    starts: dict[str, datetime] | None = None,
) -> dict[Role, str]:
    """Import the setup (with sessions at ``starts``); return a token of every role."""
    engine = make_engine(settings.database_url)
    try:
        factory = make_session_factory(engine)
        doc = tmp_path / "setup.json"
        doc.write_text(json.dumps(setup_doc(device_key, starts or {})))
        with factory.begin() as db:
            import_rows(db, read_rows(doc), settings)
            db.flush()
            tokens = {
                role: create_token(db, role, now, name=f"metrics-{role}", institution_id=scope)[1]
                for role, scope in [
                    (Role.ADMIN, None),
                    (Role.SUPERVISOR, None),
                    (Role.INSTITUTION, "school"),
                ]
            }
    finally:
        engine.dispose()
    return tokens | {Role.LECTURER: LECTURER_TOKEN}


@dataclass
class RunningServer:
    settings: Settings
    tokens: dict[Role, str]

    @property
    def url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}/metrics"

    def get(self, token: str | None) -> tuple[int, str]:
        """GET /metrics over HTTP: the status and the body."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        request = urllib.request.Request(self.url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def scrape(self) -> Samples:
        status, body = self.get(self.tokens[Role.SUPERVISOR])
        assert status == 200, body
        return parse(body)


@pytest.fixture
def server(
    mosquitto: MosquittoBroker, tmp_path: Path, sqlite_url: str, key: Ed25519PrivateKey
) -> Iterator[RunningServer]:
    """The whole server, as ``classcam-server run`` starts it, in a thread of its own."""
    mosquitto.add_account("dev-1")
    mosquitto.reload()
    settings = server_settings(mosquitto, tmp_path / "data", sqlite_url, "ingest-metrics")
    tokens = seed(settings, tmp_path, public_key_b64(key), datetime.now(UTC))
    with server_thread(settings, "metrics-server") as check:
        running = RunningServer(settings, tokens)

        def connected() -> bool:
            check()
            try:
                return value(running.scrape(), "classcam_ingest_connected") == 1.0
            except OSError:
                return False  # uvicorn not listening yet

        wait_for(connected, what="the API and the ingest consumer")
        yield running


class Device:
    """A paho client logged in as a device, collecting the acks addressed to it."""

    def __init__(self, broker: MosquittoBroker, device_id: str) -> None:
        self.acks: queue.Queue[Ack] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(device_id, broker.accounts.passwords[device_id])
        self.client.on_message = lambda c, u, m: self.acks.put(decode(Ack, bytes(m.payload)))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(topics.ack(device_id), qos=1)
        assert subscribed.wait(ACK_TIMEOUT)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(ACK_TIMEOUT)

    def wait_ack(self, reply_to: AckReplyTo) -> Ack:
        while True:
            ack = self.acks.get(timeout=ACK_TIMEOUT)
            if ack.reply_to is reply_to:
                return ack

    def upload(self, upload: TestUpload) -> Ack:
        self.publish(upload.init_topic(), upload.init_payload)
        assert self.wait_ack(AckReplyTo.INIT).state is AckState.MISSING
        for offset, data in upload.chunks:
            self.publish(upload.chunk_topic(offset), data)
        self.publish(upload.fin_topic(), upload.fin_payload())
        return self.wait_ack(AckReplyTo.FIN)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_scrape_counts_the_traffic_the_server_took(
    server: RunningServer, mosquitto: MosquittoBroker, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    good = make_upload(tmp_path / "clips", key, "dev-1", "up-good", size=3 * 4096 + 5)
    # Signed by a key the server does not know for dev-1: refused at init.
    forged = make_upload(tmp_path / "clips", generate_private_key(), "dev-1", "up-forged")
    device = Device(mosquitto, "dev-1")
    try:
        assert device.upload(good).state is AckState.COMPLETE
        device.publish(forged.init_topic(), forged.init_payload)
        assert device.wait_ack(AckReplyTo.INIT).state is AckState.REJECTED
        for seq in (1, 2):
            beat = quiet_heartbeat("dev-1", datetime.now(UTC), seq=seq)
            device.publish(topics.heartbeat("dev-1"), beat.to_bytes())
    finally:
        device.close()
    messages = 1 + len(good.chunks) + 1 + 1 + 2  # init, chunks, fin; the forged init; beats
    # Every message is counted once it is committed and acknowledged.
    wait_for(
        lambda: value(server.scrape(), "classcam_ingest_messages_acked_total") == messages,
        what="every message acknowledged",
        detail=server.scrape,
    )
    samples = server.scrape()
    expected = {
        ("classcam_ingest_messages_received_total", ()): messages,
        ("classcam_ingest_messages_total", (("kind", "init"),)): 2,
        ("classcam_ingest_messages_total", (("kind", "chunk"),)): len(good.chunks),
        ("classcam_ingest_messages_total", (("kind", "fin"),)): 1,
        ("classcam_ingest_messages_total", (("kind", "heartbeat"),)): 2,
        ("classcam_ingest_messages_total", (("kind", "status"),)): 0,
        ("classcam_ingest_messages_total", (("kind", "event"),)): 0,
        ("classcam_upload_chunks_total", ()): len(good.chunks),
        ("classcam_upload_bytes_total", ()): good.manifest.size,
        ("classcam_upload_duplicate_chunks_total", ()): 0,
        ("classcam_uploads_started_total", ()): 1,
        ("classcam_uploads_completed_total", ()): 1,
        ("classcam_uploads_rejected_total", ()): 1,
        ("classcam_rejections_total", (("reason", "signature_invalid"),)): 1,
        ("classcam_heartbeats_total", ()): 2,
        ("classcam_ingest_dead_letters_total", (("stage", "message"),)): 0,
        ("classcam_ingest_dead_letters_total", (("stage", "batch"),)): 0,
        ("classcam_ingest_commit_failures_total", ()): 0,
        ("classcam_ingest_handle_failures_total", ()): 0,
        ("classcam_device_message_refusals_total", (("reason", "bad_topic"),)): 0,
        ("classcam_devices", (("status", "online"),)): 1,
        ("classcam_devices", (("status", "offline"),)): 0,
        ("classcam_devices_registered", ()): 1,
        ("classcam_ingest_connected", ()): 1,
        ("classcam_ingest_lag_seconds", ()): 0,
    }
    assert {key: samples.get((key[0], frozenset(key[1]))) for key in expected} == expected
    # Only the refusal that happened is listed: no reason counted zero in the database.
    assert [name for name, labels in samples if name == "classcam_rejections_total"] == [
        "classcam_rejections_total"
    ]
    assert value(samples, "classcam_ingest_commits_total") >= 1
    # The feed: its newest event, as the database holds it, appended moments ago.
    engine = make_engine(server.settings.database_url)
    try:
        with make_session_factory(engine)() as db:
            newest = db.execute(
                select(FeedEvent.seq, FeedEvent.at).order_by(FeedEvent.seq.desc()).limit(1)
            ).one()
    finally:
        engine.dispose()
    samples = server.scrape()
    assert value(samples, "classcam_feed_last_seq") >= newest.seq
    assert 0 <= value(samples, "classcam_feed_newest_age_seconds") < 600
    # Process basics from prometheus_client's own collectors.
    assert value(samples, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in samples)


def test_only_a_token_that_reads_everything_scrapes(server: RunningServer) -> None:
    status, body = server.get(None)
    assert status == 401, body
    status, body = server.get("cc_not-a-token")
    assert status == 401, body
    for role in (Role.INSTITUTION, Role.LECTURER):
        status, body = server.get(server.tokens[role])
        assert status == 403, (role, body)
        assert "classcam_" not in body
    for role in (Role.ADMIN, Role.SUPERVISOR):
        status, body = server.get(server.tokens[role])
        assert status == 200, (role, body)
        assert "classcam_ingest_messages_received_total" in body


def test_sessions_by_verdict_are_counted_over_recent_sessions(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The API alone (no ingest in its process): the database's figures, no live counters."""
    now = datetime.now(UTC)
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_url)
    starts = {
        "s-old": now - timedelta(days=40),
        "s-10d": now - timedelta(days=10),
        "s-1d": now - timedelta(days=1),
        "s-next": now + timedelta(days=1),
    }
    tokens = seed(settings, tmp_path, public_key_b64(generate_private_key()), now, starts)
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    verdicts = {"s-old": "verified", "s-10d": "verified", "s-1d": "rejected", "s-next": "pending"}
    with factory.begin() as db:
        for session_id, verdict in verdicts.items():
            db.execute(
                update(ClassSession).where(ClassSession.id == session_id).values(verdict=verdict)
            )
        assert db.scalar(select(func.count()).select_from(ClassSession)) == 4
    context = ApiContext(
        settings, factory, EvidenceStore(settings.evidence_dir), recompute=lambda ids: None
    )
    try:
        with TestClient(create_app(context)) as client:
            answer = client.get(
                "/metrics", headers={"Authorization": f"Bearer {tokens[Role.SUPERVISOR]}"}
            )
    finally:
        engine.dispose()
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples = parse(answer.text)
    # The session 40 days ago is outside the range; the other three are in it.
    assert {
        verdict: value(samples, "classcam_recent_sessions", verdict=verdict)
        for verdict in ("verified", "rejected", "pending")
    } == {"verified": 1, "rejected": 1, "pending": 1}
    assert value(samples, "classcam_devices_registered") == 1
    # Never heard from: no presence row yet.
    assert value(samples, "classcam_devices", status="online") == 0
    assert value(samples, "classcam_feed_last_seq") == 0
    assert not any(name.startswith("classcam_ingest_") for name, _ in samples)
