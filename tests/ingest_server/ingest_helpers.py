"""Helpers for ingest server tests: signed uploads (random or of a given file), a processor
harness, the whole server in a thread, quiet heartbeats, a consumer's settings on a real broker,
and a condition to wait for."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from common import topics
from common.chunks import digest_file
from common.clock import VirtualClock
from common.heartbeat import Heartbeat
from common.schemas import Ack, Fin, Manifest, decode
from common.signing import generate_private_key, public_key_b64, sign_manifest
from ingest_server import audit, crud
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.core import run_server
from ingest_server.db import SessionFactory, make_engine, make_session_factory
from ingest_server.device_messages import DeviceMessages
from ingest_server.ingest import IngestProcessor, Outgoing
from ingest_server.models import UploadChunk
from ingest_server.scheduler import Scheduler
from ingest_server.settings import SCHEDULER_USER, Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore, staging_key
from ingest_server.verdicts import VerdictKeeper
from simulators.broker import SERVER_USER, MosquittoBroker, free_port

START = datetime(2026, 3, 2, 1, 30, tzinfo=UTC)
WAIT = 20.0


@dataclass
class TestUpload:
    """A random 'clip' on disk with its signed manifest, ready to send chunk by chunk."""

    __test__ = False  # not a pytest test class

    device_id: str
    upload_id: str
    path: Path
    manifest: Manifest
    init_payload: bytes
    chunks: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    def init_topic(self) -> str:
        return topics.file_init(self.device_id, self.upload_id)

    def chunk_topic(self, offset: int) -> str:
        return topics.file_chunk(self.device_id, self.upload_id, offset)

    def fin_topic(self) -> str:
        return topics.file_fin(self.device_id, self.upload_id)

    def fin_payload(self) -> bytes:
        return Fin(
            upload_id=self.upload_id, size=self.manifest.size, sha256=self.manifest.sha256
        ).to_bytes()


# What a clip of ``sess-1``'s one-minute window at START says of itself, unless told otherwise.
CLIP_FACTS: dict[str, Any] = {
    "session_id": "sess-1",
    "requested_start": START,
    "requested_end": START + timedelta(seconds=60),
    "cut_start": START - timedelta(seconds=1),
    "cut_end": START + timedelta(seconds=61),
    "duration_s": 62.0,
    "frames": 1550,
    "width": 1280,
    "height": 720,
    "created_at": START + timedelta(seconds=70),
}


def signed_upload(
    path: Path,
    key: Ed25519PrivateKey,
    device_id: str,
    upload_id: str,
    chunk_size: int = 4096,
    manifest_device_id: str | None = None,
    **facts: Any,
) -> TestUpload:
    """The file at ``path`` as a device sends it: a manifest of its size and hashes signed with
    ``key`` (``facts`` over CLIP_FACTS for the rest), and the file in ``chunk_size`` chunks."""
    digest = digest_file(path, chunk_size)
    manifest = Manifest(
        upload_id=upload_id,
        device_id=manifest_device_id or device_id,
        size=digest.size,
        sha256=digest.sha256,
        chunk_size=chunk_size,
        chunk_sha256=digest.chunk_sha256,
        **(CLIP_FACTS | facts),
    )
    data = path.read_bytes()
    chunks = [(o, data[o : o + chunk_size]) for o in range(0, len(data), chunk_size)]
    return TestUpload(device_id, upload_id, path, manifest, sign_manifest(manifest, key), chunks)


def make_upload(
    directory: Path,
    key: Ed25519PrivateKey,
    device_id: str,
    upload_id: str,
    size: int = 5 * 4096 + 123,
    chunk_size: int = 4096,
    manifest_device_id: str | None = None,
) -> TestUpload:
    """Write ``size`` random bytes and sign a manifest for them with ``key``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{upload_id}.mp4"
    path.write_bytes(os.urandom(size))
    return signed_upload(path, key, device_id, upload_id, chunk_size, manifest_device_id)


def server_settings(
    broker: MosquittoBroker, data_dir: Path, database_url: str, client_id: str, **extra: Any
) -> Settings:
    """Settings for the whole server on ``broker``: the server's and the scheduler's logins,
    the shared group ``ingest``, a free API port; ``extra`` sets any other setting."""
    passwords = broker.accounts.passwords
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        mqtt_password=passwords[SERVER_USER],
        mqtt_scheduler_password=passwords[SCHEDULER_USER],
        mqtt_client_id=client_id,
        shared_group="ingest",
        api_port=free_port(),
        **extra,
    )


@contextmanager
def server_thread(settings: Settings, name: str) -> Iterator[Callable[[], None]]:
    """The whole server, as ``classcam-server run`` starts it, in a thread of its own, stopped
    on leaving. Yields a check that raises what the thread raised, for the waits to call."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            loop.run_until_complete(run_server(settings, stop))
        except BaseException as exc:  # shown by the test, not lost in the thread
            failure.append(exc)

    def check() -> None:
        if failure:
            raise failure[0]

    thread = threading.Thread(target=serve, name=name, daemon=True)
    thread.start()
    try:
        yield check
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
    assert not thread.is_alive() and not failure


def staged_chunks(sessions: SessionFactory, device_id: str, upload_id: str) -> dict[int, bytes]:
    """The chunks staged for an upload in the database (``upload_chunks``), by offset."""
    with sessions() as session:
        rows = session.execute(
            select(UploadChunk.byte_offset, UploadChunk.data)
            .where(UploadChunk.device_id == device_id, UploadChunk.upload_id == upload_id)
            .order_by(UploadChunk.byte_offset)
        ).all()
    return {offset: bytes(data) for offset, data in rows}


class Harness:
    """A real processor on a real database and store, speaking in topics and payloads."""

    def __init__(
        self,
        database_url: str,
        evidence: Path,
        settings: Settings | None = None,
        clock: VirtualClock | None = None,
        staging: str = "local",
    ) -> None:
        self.engine: Engine = make_engine(database_url)
        self.settings = settings or Settings(
            data_dir=evidence.parent,
            database_url=database_url,
            staging=staging,  # type: ignore[arg-type]
        )
        # Keyed as the server's own sessions are, so ``audit verify`` on data_dir passes.
        self.sessions = make_session_factory(
            self.engine, audit.load_key(self.settings.audit_key_file)
        )
        self.store = EvidenceStore(evidence)
        self.clock = clock or VirtualClock(START + timedelta(minutes=5))
        self.processor = IngestProcessor(self.sessions, self.store, self.settings, self.clock)

    def register(self, device_id: str, key: Ed25519PrivateKey) -> None:
        with self.sessions.begin() as session:
            crud.register_device(session, device_id, public_key_b64(key))

    def staged(self, device_id: str, upload_id: str) -> dict[int, bytes]:
        """The chunks staged for an upload in the database, by offset."""
        return staged_chunks(self.sessions, device_id, upload_id)

    def spoil_staged(self, device_id: str, upload_id: str, position: int) -> None:
        """Flip one bit of the staged byte at ``position`` (storage gone bad after the check):
        in the staging file, or in its chunk's row (``database`` staging)."""
        if self.settings.staging == "local":
            path = self.store.staging_path(staging_key(device_id, upload_id))
            with path.open("r+b") as fh:
                fh.seek(position)
                byte = fh.read(1)
                fh.seek(position)
                fh.write(bytes([byte[0] ^ 0x01]))
            return
        with self.sessions.begin() as session:
            rows = session.scalars(
                select(UploadChunk).where(
                    UploadChunk.device_id == device_id, UploadChunk.upload_id == upload_id
                )
            ).all()
            [row] = [r for r in rows if r.byte_offset <= position < r.byte_offset + len(r.data)]
            data = bytearray(row.data)
            data[position - row.byte_offset] ^= 0x01
            row.data = bytes(data)

    def send(self, topic: str, payload: bytes) -> list[Ack]:
        return acks(self.processor.handle(topic, payload))

    def flush(self) -> list[Ack]:
        return acks(self.processor.flush())

    def send_chunks(self, upload: TestUpload, offsets: list[int] | None = None) -> list[Ack]:
        wanted = None if offsets is None else set(offsets)
        out: list[Ack] = []
        for offset, data in upload.chunks:
            if wanted is None or offset in wanted:
                out += self.send(upload.chunk_topic(offset), data)
        return out

    def upload(self, upload: TestUpload) -> list[Ack]:
        """init, every chunk, fin: the acks of all of it."""
        out = self.send(upload.init_topic(), upload.init_payload)
        out += self.send_chunks(upload)
        out += self.send(upload.fin_topic(), upload.fin_payload())
        return out

    def restart(self) -> None:
        """A fresh processor and store on the same database and directory (a server restart)."""
        self.store.close()
        self.store = EvidenceStore(self.store.root)
        self.processor = IngestProcessor(self.sessions, self.store, self.settings, self.clock)

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()


def acks(outgoing: list[Outgoing]) -> list[Ack]:
    assert all(o.qos == 1 and o.topic.endswith("/ack") for o in outgoing)
    return [decode(Ack, o.payload) for o in outgoing]


def stored_files(root: Path) -> list[Path]:
    """Every regular file in a store, staging included."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def quiet_heartbeat(device_id: str, at: datetime, seq: int = 1, **overrides: object) -> Heartbeat:
    """A heartbeat that says nothing but "alive": not recording, nothing spooled or pending, no
    bytes sent; ``overrides`` set any other field (``recording``, ``clock_offset_s``, ...)."""
    fields: dict[str, object] = {
        "uptime_s": 1.0,
        "firmware": "test",
        "recording": False,
        "spool_bytes": 0,
        "outbox_pending": 0,
        "disk_free_bytes": 1,
        "disk_total_bytes": 2,
        "bytes_sent_today": 0,
        "bytes_sent_month": 0,
    }
    return Heartbeat.model_validate(
        {**fields, **overrides, "device_id": device_id, "at": at, "seq": seq}
    )


def batched_processor(harness: Harness, fleet: DeviceMessages) -> IngestProcessor:
    """A processor on the harness's database and store that hands device messages to ``fleet``
    and commits them in its flush, as the running server wires them."""
    return IngestProcessor(
        harness.sessions,
        harness.store,
        harness.settings,
        harness.clock,
        device_messages=fleet.handle,
        flush_device_messages=fleet.flush,
    )


def consumer_settings(
    broker: MosquittoBroker, harness: Harness, client_id: str, **extra: object
) -> Settings:
    """The harness's settings for a consumer on ``broker``: the server's login, MQTT 5, the
    shared group ``ingest``; ``extra`` sets any other setting."""
    return harness.settings.model_copy(
        update={
            "mqtt_host": broker.host,
            "mqtt_port": broker.port,
            "mqtt_password": broker.accounts.passwords[SERVER_USER],
            "mqtt_protocol": "5",
            "mqtt_client_id": client_id,
            "shared_group": "ingest",
            **extra,
        }
    )


def wait_for(
    condition: Callable[[], bool],
    timeout: float = WAIT,
    what: str = "",
    detail: Callable[[], object] | None = None,
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds, saying
    ``what`` was awaited and, if given, what ``detail()`` shows then."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            shown = f": {detail()}" if detail is not None else ""
            pytest.fail(f"timed out waiting for {what or condition}{shown}")
        time.sleep(0.02)


def one_room_school(
    device_id: str, device_key: str, lecturer_token: str, starts: dict[str, datetime]
) -> dict[str, Any]:
    """A setup document: one school, one classroom (Shanghai, WGS-84) with camera
    ``device_id``, lecturer ``lect`` with an app token, class ``cls`` and a 90-minute
    session per ``starts`` entry (id → start)."""
    session = {"class_id": "cls", "classroom_id": "room", "lecturer_id": "lect", "duration_min": 90}
    return {
        "institutions": [{"id": "school", "name": "职业培训学校"}],
        "classrooms": [
            {
                "id": "room",
                "institution_id": "school",
                "name": "101",
                "lat": 31.2304,
                "lon": 121.4737,
                "datum": "wgs84",
            }
        ],
        "devices": [{"device_id": device_id, "classroom_id": "room", "public_key": device_key}],
        "lecturers": [
            {"id": "lect", "institution_id": "school", "name": "王老师", "token": lecturer_token}
        ],
        "classes": [{"id": "cls", "institution_id": "school", "name": "电工"}],
        "sessions": [
            {"id": sid, "start": start.isoformat(), **session} for sid, start in starts.items()
        ],
    }


def rooms_school(rooms: int, start: datetime) -> dict[str, Any]:
    """A setup document: one school with ``rooms`` classrooms ``room-i`` (0.01° apart), each
    with camera ``cam-i`` (one key for all), lecturer ``lect-i`` (app token ``tok-i`` × 4) and
    a 90-minute session ``s{i}`` of class ``cls`` at ``start``."""
    key = public_key_b64(generate_private_key())
    return {
        "institutions": [{"id": "school", "name": "学校"}],
        "classrooms": [
            {
                "id": f"room-{i}",
                "institution_id": "school",
                "name": f"{i}",
                "lat": 31.2304 + i * 0.01,
                "lon": 121.4737,
                "datum": "wgs84",
            }
            for i in range(rooms)
        ],
        "devices": [
            {"device_id": f"cam-{i}", "classroom_id": f"room-{i}", "public_key": key}
            for i in range(rooms)
        ],
        "lecturers": [
            {"id": f"lect-{i}", "institution_id": "school", "name": "老师", "token": f"tok-{i}" * 4}
            for i in range(rooms)
        ],
        "classes": [{"id": "cls", "institution_id": "school", "name": "电工"}],
        "sessions": [
            {
                "id": f"s{i}",
                "class_id": "cls",
                "classroom_id": f"room-{i}",
                "lecturer_id": f"lect-{i}",
                "start": start.isoformat(),
                "duration_min": 90,
            }
            for i in range(rooms)
        ],
    }


@dataclass
class VerdictRig:
    """The server's verdict path without a broker: device messages, the scheduler asking for
    windows, the verdict keeper and the API, on one virtual clock over one database."""

    factory: Any
    clock: VirtualClock
    fleet: DeviceMessages
    scheduler: Scheduler
    api: TestClient


def verdict_rig(
    settings: Settings, engine: Engine, doc: dict[str, Any], clock_start: datetime
) -> VerdictRig:
    """Import ``doc`` into ``engine``'s (migrated) database and wire the verdict path on a
    virtual clock at ``clock_start``, as ``run_server`` wires it."""
    factory = make_session_factory(engine)
    path = settings.data_dir / "setup.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    with factory.begin() as db:
        import_rows(db, read_rows(path), settings)
    clock = VirtualClock(start=clock_start)
    keeper = VerdictKeeper(factory, settings, clock)
    fleet = DeviceMessages(factory, settings.heartbeat_timeout_s, clock)
    scheduler = Scheduler(settings, factory, fleet, keeper.recompute, clock)
    fleet.on_online = scheduler.device_online
    fleet.on_sessions_changed = scheduler.sessions_changed
    context = ApiContext(
        settings, factory, EvidenceStore(settings.evidence_dir), keeper.recompute, clock=clock
    )
    return VerdictRig(factory, clock, fleet, scheduler, TestClient(create_app(context)))
