"""The evidence path end to end, on real parts: a synthetic camera recorded by the real agent,
cut by stream copy, uploaded over a real broker to the real server, verified and stored."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import av
import pytest

from common.clock import to_utc
from common.signing import generate_private_key, public_key_b64
from edge_agent.config import load_config
from edge_agent.outbox import Outbox
from edge_agent.uplink import Uploader
from simulators.broker import EmbeddedBroker, MosquittoBroker
from simulators.faults import CorruptingLink
from simulators.harness import Device, ServerProcess, provision_device

SEGMENT_S = 2.0
SMALL_CAMERA = {"width": 640, "height": 360, "fps": 15.0}


def _db(server: ServerProcess) -> sqlite3.Connection:
    return sqlite3.connect(server.db_url.removeprefix("sqlite:///"))


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def record_and_cut(
    device: Device, seconds: float = 30, window: tuple[float, float] = (10, 20)
) -> tuple[datetime, datetime, str]:
    """Record ``seconds`` on a virtual clock, cut ``window`` (offsets from the recording's
    start); return the requested bounds and the upload id."""
    out = device.cli("record", "--seconds", str(seconds), "--virtual-clock").stdout.split()
    start = to_utc(datetime.fromisoformat(out[0]))
    req_start = start + timedelta(seconds=window[0])
    req_end = start + timedelta(seconds=window[1])
    upload_id = device.cli(
        "cut", "--start", req_start.isoformat(), "--end", req_end.isoformat()
    ).stdout.strip()
    return req_start, req_end, upload_id


def check_stored_clip(
    server: ServerProcess,
    device: Device,
    upload_id: str,
    req_start: datetime,
    req_end: datetime,
    agent_sha256: str,
) -> Path:
    """The stored clip is the agent's bytes, decodes, lasts the window, shows the window."""
    with _db(server) as db:
        row = db.execute(
            "SELECT path, sha256, cut_start FROM clips WHERE upload_id = ?", (upload_id,)
        ).fetchone()
    assert row is not None, server.tail_log()
    path = server.evidence_dir / row[0]
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == agent_sha256 == row[1]
    cut_start = to_utc(datetime.fromisoformat(str(row[2])))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
    assert len(frames) > 0
    first = cut_start + timedelta(seconds=float(frames[0].time))
    last = cut_start + timedelta(seconds=float(frames[-1].time))
    duration = (last - first).total_seconds() + 1 / SMALL_CAMERA["fps"]
    window = (req_end - req_start).total_seconds()
    assert abs(duration - window) <= SEGMENT_S, duration
    slack = timedelta(seconds=SEGMENT_S)
    assert req_start - slack <= first <= req_start + slack
    assert req_end - slack <= last <= req_end + slack
    return path


@pytest.fixture
def stack(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[tuple[ServerProcess, Device]]:
    server = ServerProcess(tmp_path / "server", mosquitto, protocol="5")
    server.cli("migrate")
    device = provision_device(
        tmp_path / "devices",
        "cam-e2e-1",
        mosquitto,
        protocol="5",
        settings={"camera": SMALL_CAMERA},
    )
    server.register_device(device.device_id, device.public_key)
    server.start()
    yield server, device
    server.stop()


def _manifest_sha(device: Device, upload_id: str) -> str:
    outbox = Outbox(load_config(device.config_path).outbox_dir)
    item = outbox.get(upload_id)
    assert item is not None
    outbox.close()
    return item.sha256


def test_record_cut_upload_verify_store(stack: tuple[ServerProcess, Device]):
    server, device = stack
    req_start, req_end, upload_id = record_and_cut(device)
    sha = _manifest_sha(device, upload_id)
    device.cli("upload", "--until-empty", timeout=120)
    check_stored_clip(server, device, upload_id, req_start, req_end, sha)
    outbox_file = load_config(device.config_path).outbox_dir / f"{upload_id}.mp4"
    assert not outbox_file.exists(), "the agent forgets a clip once the server has it"


def test_same_path_on_embedded_broker_mqtt311(tmp_path: Path, embedded_broker: EmbeddedBroker):
    server = ServerProcess(
        tmp_path / "server", embedded_broker, protocol="3.1.1", shared_group=None
    )
    server.cli("migrate")
    device = provision_device(
        tmp_path / "devices",
        "cam-e2e-2",
        embedded_broker,
        protocol="3.1.1",
        settings={"camera": SMALL_CAMERA},
    )
    server.register_device(device.device_id, device.public_key)
    server.start()
    try:
        req_start, req_end, upload_id = record_and_cut(device)
        sha = _manifest_sha(device, upload_id)
        device.cli("upload", "--until-empty", timeout=180)
        check_stored_clip(server, device, upload_id, req_start, req_end, sha)
    finally:
        server.stop()


def _received_bytes(server: ServerProcess, upload_id: str) -> int:
    with _db(server) as db:
        row = db.execute(
            "SELECT received_ranges FROM uploads WHERE upload_id = ?", (upload_id,)
        ).fetchone()
    if row is None or row[0] is None:
        return 0
    return sum(end - start for start, end in json.loads(row[0]))


def test_resume_after_sigkill_resends_at_most_two_extra_chunks(
    tmp_path: Path, mosquitto: MosquittoBroker
):
    server = ServerProcess(tmp_path / "server", mosquitto)
    server.cli("migrate")
    chunk = 16 * 1024
    device = provision_device(
        tmp_path / "devices",
        "cam-e2e-3",
        mosquitto,
        settings={
            "camera": SMALL_CAMERA,
            "upload": {"chunk_size": chunk, "rate_limit_bytes_per_s": 256 * 1024, "window": 4},
        },
    )
    server.register_device(device.device_id, device.public_key)
    server.start()
    try:
        req_start, req_end, upload_id = record_and_cut(device)
        sha = _manifest_sha(device, upload_id)
        size = (
            load_config(device.config_path).outbox_dir.joinpath(f"{upload_id}.mp4").stat().st_size
        )
        agent = device.spawn("upload", "--until-empty")
        _wait(lambda: _received_bytes(server, upload_id) > size * 0.3, 60, "a third of the clip")
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        # Let everything the broker already had reach the server: that is what it holds now.
        time.sleep(1.0)
        with _db(server) as db:
            before = db.execute(
                "SELECT chunks_received, chunks_duplicate FROM uploads WHERE upload_id = ?",
                (upload_id,),
            ).fetchone()
        held = _received_bytes(server, upload_id)
        assert 0 < held < size
        device.cli("upload", "--until-empty", timeout=120)
        with _db(server) as db:
            after = db.execute(
                "SELECT chunks_received, chunks_duplicate FROM uploads WHERE upload_id = ?",
                (upload_id,),
            ).fetchone()
        missing_chunks = -(-(size - held) // chunk)
        resent = after[0] - before[0]
        assert after[1] - before[1] <= 2, "chunks re-sent that the server already had"
        assert resent <= missing_chunks + 2, (resent, missing_chunks)
        check_stored_clip(server, device, upload_id, req_start, req_end, sha)
    finally:
        server.stop()


def test_corrupted_chunk_is_repaired_by_resending_it(stack: tuple[ServerProcess, Device]):
    server, device = stack
    req_start, req_end, upload_id = record_and_cut(device)
    config = load_config(device.config_path)
    outbox = Outbox(config.outbox_dir)
    link = CorruptingLink(
        config, config.broker_password(), corrupt_offsets={config.upload.chunk_size * 2}
    )
    uploader = Uploader(link, outbox, config.upload)
    link.start()
    try:
        assert link.wait_connected(10)
        item = outbox.get(upload_id)
        assert item is not None
        assert uploader.upload(item, threading.Event()).value == "complete"
    finally:
        link.stop()
    assert link.corrupted == [config.upload.chunk_size * 2]
    assert uploader.stats.fins >= 2, "the bad chunk was asked for again after fin"
    check_stored_clip(server, device, upload_id, req_start, req_end, item.sha256)
    with _db(server) as db:
        reasons = [r[0] for r in db.execute("SELECT reason FROM rejections")]
    assert "chunk_hash_mismatch" in reasons


def _evidence_files(server: ServerProcess) -> list[Path]:
    return [p for p in server.evidence_dir.rglob("*") if p.is_file() and ".staging" not in p.parts]


def test_unregistered_device_and_wrong_key_are_rejected(tmp_path: Path, mosquitto: MosquittoBroker):
    server = ServerProcess(tmp_path / "server", mosquitto)
    server.cli("migrate")
    stranger = provision_device(
        tmp_path / "devices", "cam-unknown", mosquitto, settings={"camera": SMALL_CAMERA}
    )
    impostor = provision_device(
        tmp_path / "devices", "cam-impostor", mosquitto, settings={"camera": SMALL_CAMERA}
    )
    # The impostor's registered key is not the one it signs with.
    server.register_device(impostor.device_id, public_key_b64(generate_private_key()))
    server.start()
    try:
        # A device not registered yet may be soon: its clip waits for a retry. A wrong key is final.
        for device, reason, state in (
            (stranger, "unknown_device", "pending"),
            (impostor, "signature_invalid", "rejected"),
        ):
            _, _, upload_id = record_and_cut(device, seconds=6, window=(1, 4))
            result = device.spawn("upload", "--until-empty")
            assert result.wait(timeout=120) == 1, "a refused outbox is not a success"
            outbox = Outbox(load_config(device.config_path).outbox_dir)
            item = outbox.get(upload_id)
            assert item is not None and item.state.value == state
            assert item.reason == reason
            assert item.path.exists(), "a rejected clip stays on the device for people to see"
        with _db(server) as db:
            assert db.execute("SELECT count(*) FROM clips").fetchone()[0] == 0
            reasons = {r[0] for r in db.execute("SELECT reason FROM rejections")}
        assert {"unknown_device", "signature_invalid"} <= reasons
        assert _evidence_files(server) == []
    finally:
        server.stop()


def test_reference_view_at_installation_becomes_the_classrooms_reference(
    tmp_path: Path, mosquitto: MosquittoBroker
):
    server = ServerProcess(tmp_path / "server", mosquitto)
    device = provision_device(
        tmp_path / "devices", "cam-install", mosquitto, settings={"camera": SMALL_CAMERA}
    )
    setup = {
        "institutions": [{"id": "school", "name": "学校"}],
        "classrooms": [
            {"id": "room-9", "institution_id": "school", "name": "9", "lat": 30.0, "lon": 120.0}
        ],
        "devices": [
            {
                "device_id": device.device_id,
                "classroom_id": "room-9",
                "public_key": device.public_key,
            }
        ],
    }
    (tmp_path / "setup.json").write_text(json.dumps(setup))
    server.cli("import", str(tmp_path / "setup.json"))
    server.start()
    try:
        upload_id = device.cli("reference").stdout.strip()
        device.cli("upload", "--until-empty", timeout=60)
        deadline = time.monotonic() + 20
        row = None
        while time.monotonic() < deadline and not (row and row[0]):
            with _db(server) as db:
                row = db.execute("SELECT reference_upload_id FROM classrooms").fetchone()
            time.sleep(0.1)
        assert row == (upload_id,)
        with _db(server) as db:
            kind, path = db.execute(
                "SELECT kind, path FROM clips WHERE upload_id = ?", (upload_id,)
            ).fetchone()
        assert kind == "reference" and path.endswith(".jpg")
        assert (server.evidence_dir / path).read_bytes()[:3] == b"\xff\xd8\xff"
    finally:
        server.stop()
