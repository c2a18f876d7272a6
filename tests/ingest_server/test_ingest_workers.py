"""Three ingest workers on one shared subscription (``$share/ingest/…``), as production runs
them (docs/deployment.md): ``classcam-server run`` and two ``classcam-server ingest`` processes,
each with its own broker account, one PostgreSQL database, one evidence store. A fleet of real
agents' uploaders (real cuts of a real recording, signed, chunked, over TLS to a real Mosquitto
with the shipped config and ACL) uploads at once; the broker hands each chunk to whichever
worker it picks, so every upload's chunks are spread over the three and any of them may get the
``fin`` (staging in the database: ``ingest_server.uploads.staging``).

Then one worker is killed (SIGKILL) while uploads are in flight, and started again as systemd
would: whatever it held uncommitted was never acknowledged to the broker, which delivers it
again to its session. Both times every clip is stored exactly once, byte for byte, with exactly
one ``clip_stored`` event, nothing is left staged, and the audit chain the three wrote into at
once verifies.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from ingest_helpers import wait_for
from sqlalchemy import func, select

from common.clock import SystemClock, VirtualClock
from common.schemas import AckState
from common.signing import load_private_key
from edge_agent.camera import SyntheticCamera
from edge_agent.clips import ClipRequest, cut_and_enqueue
from edge_agent.config import load_config
from edge_agent.outbox import Outbox, OutboxItem
from edge_agent.recorder import Recorder
from edge_agent.spool import Spool
from edge_agent.uplink import MqttLink, Uploader
from ingest_server import audit, cli, crud
from ingest_server.db import make_engine, make_session_factory, migrate
from ingest_server.models import Clip, FeedEvent, Upload, UploadChunk
from simulators.broker import SERVER_USER, MosquittoBroker, ingest_worker_acl
from simulators.harness import ServerProcess, provision_device

pytestmark = pytest.mark.timeout(300)

WORKERS = (SERVER_USER, "classcam-ingest-2", "classcam-ingest-3")
DEVICES = 4
CLIPS_PER_ROUND = 2
UPLOAD = {
    # Small chunks, so that every clip is many messages spread over the workers, and a rate
    # limit, so that uploads are still in flight when a worker is killed.
    "chunk_size": 8192,
    "rate_limit_bytes_per_s": 60_000,
    "window": 8,
    "ack_timeout_s": 4.0,
    "retry_min_s": 1.0,
    "retry_max_s": 2.0,
}


class Cluster:
    def __init__(self, root: Path, database_url: str) -> None:
        self.root = root
        self.database_url = database_url
        self.broker = MosquittoBroker(
            root / "broker", extra_acl="".join(ingest_worker_acl(u) for u in WORKERS[1:])
        )
        for username in WORKERS[1:]:
            self.broker.add_account(username)
        self.broker.start()
        shared = root / "shared"
        shared.mkdir()
        common_env = {
            "CLASSCAM_EVIDENCE_DIR": str(shared / "evidence"),
            "CLASSCAM_AUDIT_KEY_FILE": str(shared / "audit.key"),
            "CLASSCAM_EXPORT_KEY_FILE": str(shared / "export.key"),
            "CLASSCAM_STAGING": "database",
        }
        self.workers = [
            ServerProcess(
                root / f"worker-{i + 1}",
                self.broker,
                database_url=database_url,
                command="run" if username == SERVER_USER else "ingest",
                extra_env={
                    **common_env,
                    "CLASSCAM_MQTT_USERNAME": username,
                    "CLASSCAM_MQTT_PASSWORD": self.broker.accounts.passwords[username],
                },
            )
            for i, username in enumerate(WORKERS)
        ]
        self.evidence = shared / "evidence"
        self.audit_key = shared / "audit.key"
        self.engine = make_engine(database_url)

    def start(self) -> None:
        self.workers[0].cli("migrate")
        for worker in self.workers:
            worker.start()
        self.sessions = make_session_factory(self.engine, audit.load_key(self.audit_key))

    def close(self) -> None:
        for worker in self.workers:
            if worker.process is not None:
                worker.stop()
        self.broker.stop()
        self.engine.dispose()


class Fleet:
    """Real agents' upload path: a recording, cuts of it signed by each device, the uploader."""

    def __init__(self, root: Path, cluster: Cluster) -> None:
        clock = VirtualClock()
        self.spool = Spool(root / "spool")
        self.start = clock.now()
        camera = SyntheticCamera("workers-cam", width=320, height=240, fps=10.0, clock=clock)
        Recorder(camera, self.spool, clock).record_for(30)
        with ThreadPoolExecutor(4) as pool:
            devices = list(
                pool.map(
                    lambda i: provision_device(
                        root / "devices",
                        f"cam-{i}",
                        cluster.broker,
                        settings={"upload": dict(UPLOAD)},
                    ),
                    range(DEVICES),
                )
            )
        with cluster.sessions.begin() as db:
            for device in devices:
                crud.register_device(db, device.device_id, device.public_key)
        self.configs = [load_config(device.config_path) for device in devices]
        self.round = 0

    def clips(self) -> list[tuple[Uploader, list[OutboxItem]]]:
        """Each device's next clips, cut and queued (distinct windows: distinct bytes)."""
        out = []
        for n, config in enumerate(self.configs):
            outbox = Outbox(config.outbox_dir)
            key = load_private_key(config.keys.private_key_file)
            items = []
            for c in range(CLIPS_PER_ROUND):
                begin = self.start + timedelta(seconds=1 + (self.round * 7 + n + c * 3) % 18)
                request = ClipRequest(begin, begin + timedelta(seconds=8))
                items.append(
                    cut_and_enqueue(
                        self.spool,
                        outbox,
                        key,
                        request,
                        device_id=config.device_id,
                        chunk_size=config.upload.chunk_size,
                        clock=SystemClock(),
                    )
                )
            link = MqttLink(config, config.broker_password())
            out.append((Uploader(link, outbox, config.upload), items))
        self.round += 1
        return out


def upload_all(
    devices: list[tuple[Uploader, list[OutboxItem]]], timeout: float = 120.0
) -> threading.Thread:
    """Start every device uploading its clips, side by side, each clip tried again (as the
    agent's loop does) until ``complete``; the returned thread ends when all are."""
    failures: list[str] = []

    def device_loop(uploader: Uploader, items: list[OutboxItem]) -> None:
        uploader.link.start()
        deadline = time.monotonic() + timeout
        try:
            for item in items:
                while (state := uploader.upload(item)) is not AckState.COMPLETE:
                    if state is AckState.REJECTED or time.monotonic() > deadline:
                        failures.append(f"{item.upload_id}: {state}")
                        return
        finally:
            uploader.link.stop()

    def run() -> None:
        threads = [threading.Thread(target=device_loop, args=d) for d in devices]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    runner = threading.Thread(target=run)
    runner.failures = failures  # type: ignore[attr-defined]
    runner.start()
    return runner


def assert_each_stored_once(cluster: Cluster, items: list[OutboxItem]) -> None:
    with cluster.sessions() as db:
        for item in items:
            clips = db.scalars(select(Clip).where(Clip.upload_id == item.upload_id)).all()
            assert len(clips) == 1, (item.upload_id, len(clips))
            stored = (cluster.evidence / clips[0].path).read_bytes()
            assert hashlib.sha256(stored).hexdigest() == clips[0].sha256 == item.sha256
        events = db.scalars(select(FeedEvent).where(FeedEvent.kind == "clip_stored")).all()
        stored_ids = [json.loads(event.payload)["upload_id"] for event in events]
        assert len(stored_ids) == len(set(stored_ids)), "a clip_stored event twice"
        assert {i.upload_id for i in items} <= set(stored_ids)
        assert db.scalar(select(func.count()).select_from(UploadChunk)) == 0, "left staged"
        assert db.scalar(select(func.count()).select_from(Clip)) == len(stored_ids)


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, pg_url)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def test_three_workers_store_every_clip_once_also_when_one_is_killed_mid_upload(
    cluster: Cluster, tmp_path: Path
) -> None:
    fleet = Fleet(tmp_path / "fleet", cluster)

    # Round 1: all three up.
    first = fleet.clips()
    runner = upload_all(first)
    runner.join(timeout=150)
    assert not runner.is_alive() and runner.failures == []  # type: ignore[attr-defined]
    first_items = [item for _, items in first for item in items]
    assert_each_stored_once(cluster, first_items)
    finishers = [w for w in cluster.workers if "complete:" in w.tail_log(1_000_000)]
    assert len(finishers) >= 2, "the fins went to one worker only: no shared subscription?"

    # Round 2: a worker is killed while uploads are in flight, and comes back.
    second = fleet.clips()
    second_items = [item for _, items in second for item in items]
    runner = upload_all(second)

    def in_flight() -> bool:
        with cluster.sessions() as db:
            staged = db.scalar(select(func.count()).select_from(UploadChunk)) or 0
            receiving = db.scalar(
                select(func.count()).select_from(Upload).where(Upload.state == "receiving")
            )
        return staged > 0 and (receiving or 0) >= DEVICES // 2

    wait_for(in_flight, 60, "uploads in flight on the workers")
    victim = cluster.workers[1]
    victim.kill()
    with cluster.sessions() as db:
        done_while_killed = db.scalar(
            select(func.count())
            .select_from(Clip)
            .where(Clip.upload_id.in_([i.upload_id for i in second_items]))
        )
    assert done_while_killed is not None and done_while_killed < len(second_items)
    # systemd's Restart=: the same account, so the broker's session of this worker, and the
    # messages it was given but never acknowledged, come back to it.
    victim.start()
    runner.join(timeout=200)
    assert not runner.is_alive() and runner.failures == []  # type: ignore[attr-defined]
    assert_each_stored_once(cluster, first_items + second_items)

    # The three wrote into one audit chain at once: it verifies.
    verified = cluster.workers[0].cli("audit", "verify")
    assert "audit log intact" in verified.stdout, verified.stdout


def test_a_worker_refuses_what_would_split_uploads_or_the_audit_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'classcam.db'}"
    args = ["--data-dir", str(tmp_path), "--database-url", url, "ingest"]
    monkeypatch.setenv("CLASSCAM_STAGING", "database")
    assert cli.main(args) == 1
    assert "run `classcam-server migrate`" in caplog.text
    migrate(url)
    assert cli.main(args) == 1
    assert "no audit key" in caplog.text  # `run` makes it; a worker must be given it
    audit.load_key(tmp_path / "audit.key")
    monkeypatch.setenv("CLASSCAM_STAGING", "local")
    assert cli.main(args) == 1
    assert "CLASSCAM_STAGING=database" in caplog.text
    monkeypatch.setenv("CLASSCAM_STAGING", "database")
    assert cli.main(args) == 1
    assert "a broker account of its own" in caplog.text  # not `run`'s
    monkeypatch.setenv("CLASSCAM_MQTT_USERNAME", "classcam-ingest-2")
    monkeypatch.setenv("CLASSCAM_SHARED_GROUP", "")
    assert cli.main(args) == 1
    assert "needs a shared subscription" in caplog.text
