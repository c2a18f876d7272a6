"""Heartbeat ingest at fleet scale: the real server consumer against a bare paho subscriber.

    .venv/bin/python bench/heartbeat_ingest.py [--devices 2000 --period 6 --steady-s 40]
    .venv/bin/python bench/heartbeat_ingest.py --devices 10000 --period 30    # issue 11's fleet

One run starts its own Mosquitto with the shipped config and ACL (simulators.broker), migrates a
SQLite database in a temp dir, registers every device as the CLI does (crud.register_device),
and runs the server (ingest_server.core.run_server: consumer, device messages, clip checks,
scheduler; no API) in a child process. Every device logs in as itself (the ACL lets a login
write only its own up/ tree) over one asyncio connection each and publishes heartbeats, built as
the agent builds them, at QoS 1.

1. Steady: each device beats every ``--period`` seconds, spread evenly, for ``--steady-s``
   seconds; a probe camera uploads a small file again and again and times init→ack and
   fin→ack. Lag is a heartbeat's publish time (its ``at``) to the moment the consumer
   acknowledged it to the broker, i.e. after its effect committed.
2. The same with clip checks: the probe also uploads real H.264 window clips (``--clip-s``
   seconds of 1280x720 at 15 fps, as the agent records), each checked in the server's clip
   checker; init/fin latencies of probes that overlap a running check are reported apart.
3. Burst: with the server and a bare paho subscriber (the operator login, ``up/+/heartbeat``)
   both away, every device publishes ``--burst`` heartbeats into their persistent sessions;
   then the bare subscriber drains it alone, then the server does. msg/s of each from connect
   to the last message (the server's: the last acknowledged after commit), and the ratio.

Server CPU (user+system of its process, psutil) is divided by the heartbeats it stored in the
same span. Goals (issue 11): ratio >= 0.8 of the bare subscriber, p99 lag < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from figures import Figure, report
from sqlalchemy import select

from common import topics
from common.chunks import digest_file
from common.heartbeat import GnssPosition, Heartbeat, ModemHealth
from common.schemas import Ack, AckReplyTo, AckState, Fin, Manifest, decode
from common.signing import public_key_b64, sign_manifest
from ingest_server import audit, crud
from ingest_server.consumer import Inbound, IngestConsumer
from ingest_server.db import make_engine, make_session_factory, migrate
from ingest_server.models import ClipCheck
from ingest_server.settings import SCHEDULER_USER, SERVER_USER, Settings
from simulators.broker import OPERATOR_USER, BrokerAccounts, MosquittoBroker
from simulators.clip_files import write_mp4

PROBE = "cam-probe"
BARE = OPERATOR_USER  # reads up/#, as a bare subscriber needs


# ------------------------------------------------------------------ the server (child process)


class TimedConsumer(IngestConsumer):
    """The real consumer, noting when each heartbeat was acknowledged (after its commit)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stored: list[tuple[float, bytes]] = []
        self.connected_at: list[float] = []

    def _on_connect(self, *args: Any) -> None:
        self.connected_at.append(time.time())
        super()._on_connect(*args)

    def _ack(self, items: list[Inbound]) -> None:
        super()._ack(items)
        now = time.time()
        self.stored.extend((now, i.payload) for i in items if i.topic.endswith("/heartbeat"))


def serve(config_file: Path) -> None:
    """The child: run_server until SIGTERM, printing progress lines, then write its log."""
    from ingest_server.core import run_server

    config = json.loads(config_file.read_text())
    settings = Settings(**config["settings"])
    consumers: list[TimedConsumer] = []

    class Recorded(TimedConsumer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            consumers.append(self)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

        async def progress() -> None:
            while not stop.is_set():
                if consumers and consumers[0].connected.is_set():
                    c = consumers[0]
                    print(json.dumps({"stored": len(c.stored), "acked": c.counters["acked"]}))
                    sys.stdout.flush()
                await asyncio.sleep(0.2)

        task = asyncio.create_task(progress())
        await run_server(settings, stop, consumer_class=Recorded)
        task.cancel()

    asyncio.run(main())
    consumer = consumers[0]
    lags = []
    for stored_at, payload in consumer.stored:
        sent = datetime.fromisoformat(json.loads(payload)["at"]).timestamp()
        lags.append((sent, stored_at))
    Path(config["out"]).write_text(
        json.dumps({"connected_at": consumer.connected_at, "stored": lags})
    )


@dataclass
class Server:
    """The server child process and what it reports."""

    config_file: Path
    out: Path
    process: subprocess.Popen[str] | None = None
    stored: int = 0
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.stored, self.ready = 0, threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.config_file)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(60):
            raise RuntimeError("the server did not subscribe")

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.stored = json.loads(line)["stored"]
            except (ValueError, KeyError):
                continue
            self.ready.set()

    def cpu(self) -> float:
        assert self.process is not None
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def wait_stored(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.stored < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server stored {self.stored} of {count} heartbeats")
            time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        return dict(json.loads(self.out.read_text()))


# ------------------------------------------------------------------ device logins (asyncio)


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!H", len(raw)) + raw


class DeviceLogin:
    """One device's MQTT 3.1.1 connection (clean session, no keepalive) publishing at QoS 1."""

    def __init__(self, device_id: str, password: str) -> None:
        self.device_id, self.password = device_id, password
        self.topic = _text(topics.heartbeat(device_id))
        self.seq = 0
        self.unacked = 0
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None
        self.started = time.time()

    async def connect(self, host: str, port: int) -> None:
        reader, self.writer = await asyncio.open_connection(host, port)
        body = (
            _text("MQTT")
            + bytes([4, 0xC2])
            + struct.pack("!H", 0)
            + _text(self.device_id)
            + _text(self.device_id)
            + _text(self.password)
        )
        self.writer.write(b"\x10" + _remaining(len(body)) + body)
        connack = await reader.readexactly(4)
        if connack[3] != 0:
            raise RuntimeError(f"{self.device_id} refused: {connack[3]}")
        self.reading = asyncio.create_task(self._pubacks(reader))

    async def _pubacks(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                packet = await reader.readexactly(4)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if packet[0] == 0x40:
                self.unacked -= 1

    def beat(self) -> None:
        assert self.writer is not None
        self.seq += 1
        payload = Heartbeat(
            device_id=self.device_id,
            at=datetime.now(UTC),
            seq=self.seq,
            uptime_s=time.time() - self.started,
            firmware="0.1.0",
            recording=self.seq % 3 == 0,
            spool_bytes=812_000_000,
            outbox_pending=self.seq % 4,
            disk_free_bytes=20_000_000_000,
            disk_total_bytes=31_000_000_000,
            cpu_temp_c=51.5,
            clock_offset_s=0.0,
            clock_source="system",
            clock_synced=True,
            bytes_sent_today=150_000_000,
            bytes_sent_month=3_000_000_000,
            modem=ModemHealth(
                model="EC25",
                rssi_dbm=-71,
                rsrp_dbm=-95,
                rsrq_db=-11.0,
                sinr_db=12.5,
                registration="home",
                operator="CHINA MOBILE",
                access_technology="LTE",
                iccid="89860000000000000000",
                imei="860000000000000",
            ),
            gnss=GnssPosition(lat=31.2304, lon=121.4737, hdop=0.9),
        ).to_bytes()
        packet_id = self.seq % 65535 + 1
        body = self.topic + struct.pack("!H", packet_id) + payload
        self.writer.write(b"\x32" + _remaining(len(body)) + body)
        self.unacked += 1


class Fleet:
    """Every device login on one asyncio loop in its own thread."""

    def __init__(self, host: str, port: int, passwords: dict[str, str]) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.devices = [DeviceLogin(d, p) for d, p in passwords.items()]
        self.host, self.port = host, port
        self.published = 0

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def connect(self) -> None:
        async def connect_all() -> None:
            for start in range(0, len(self.devices), 200):
                batch = self.devices[start : start + 200]
                await asyncio.gather(*(d.connect(self.host, self.port) for d in batch))

        self.run(connect_all())

    def steady(self, period: float, seconds: float) -> None:
        """Each device beats every ``period`` s at its own phase, for ``seconds``."""

        async def beat() -> None:
            n = len(self.devices)
            t0 = time.monotonic()
            sent = 0
            total = int(seconds / period * n)
            while sent < total:
                due = int((time.monotonic() - t0) / period * n)
                while sent < min(due, total):
                    self.devices[sent % n].beat()
                    sent += 1
                    self.published += 1
                await asyncio.sleep(0.005)
            await self._drained()

        self.run(beat())

    def burst(self, per_device: int) -> int:
        async def flood() -> None:
            for _ in range(per_device):
                for device in self.devices:
                    device.beat()
                    self.published += 1
                await asyncio.sleep(0)
                await self._drained(limit=len(self.devices) * 2)
            await self._drained()

        self.run(flood())
        return per_device * len(self.devices)

    def close(self) -> None:
        async def close_all() -> None:
            for device in self.devices:
                if device.writer is not None:
                    device.writer.close()

        self.run(close_all())

    async def _drained(self, limit: int = 0) -> None:
        while sum(d.unacked for d in self.devices) > limit:
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------ the probe camera (paho)


@dataclass
class ProbeUpload:
    upload_id: str
    init_payload: bytes
    chunks: list[tuple[int, bytes]]
    fin_payload: bytes


def signed_upload(
    key: Ed25519PrivateKey, path: Path, upload_id: str, chunk_size: int, duration_s: float
) -> ProbeUpload:
    digest = digest_file(path, chunk_size)
    start = datetime.now(UTC)
    manifest = Manifest(
        upload_id=upload_id,
        device_id=PROBE,
        cut_start=start,
        cut_end=start + timedelta(seconds=duration_s),
        size=digest.size,
        sha256=digest.sha256,
        chunk_size=chunk_size,
        chunk_sha256=digest.chunk_sha256,
        duration_s=duration_s,
        frames=int(duration_s * 15),
        width=1280,
        height=720,
        created_at=start,
    )
    data = path.read_bytes()
    chunks = [(o, data[o : o + chunk_size]) for o in range(0, len(data), chunk_size)]
    fin = Fin(upload_id=upload_id, size=digest.size, sha256=digest.sha256).to_bytes()
    return ProbeUpload(upload_id, sign_manifest(manifest, key), chunks, fin)


class Probe:
    """The probe camera: uploads and times the server's answers to init and fin."""

    def __init__(self, host: str, port: int, password: str, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.acks: queue.Queue[Ack] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=PROBE)
        self.client.username_pw_set(PROBE, password)
        self.client.on_message = lambda c, u, m: self.acks.put(decode(Ack, m.payload))
        self.client.connect(host, port)
        self.client.subscribe(topics.ack(PROBE), qos=1)
        self.client.loop_start()
        self.n = 0

    def _answer(self, upload_id: str, reply_to: AckReplyTo, timeout: float = 60) -> Ack:
        deadline = time.monotonic() + timeout
        while True:
            ack = self.acks.get(timeout=max(0.01, deadline - time.monotonic()))
            if ack.upload_id == upload_id and ack.reply_to is reply_to:
                return ack

    def upload(self, path: Path, chunk_size: int, duration_s: float) -> tuple[float, float, float]:
        """Upload ``path``; return (init→ack s, fin→ack s, when fin was answered)."""
        self.n += 1
        up = signed_upload(self.key, path, f"up-{self.n}", chunk_size, duration_s)
        t0 = time.perf_counter()
        self.client.publish(topics.file_init(PROBE, up.upload_id), up.init_payload, qos=1)
        self._answer(up.upload_id, AckReplyTo.INIT)
        init_s = time.perf_counter() - t0
        infos = [
            self.client.publish(topics.file_chunk(PROBE, up.upload_id, o), data, qos=1)
            for o, data in up.chunks
        ]
        for info in infos:
            info.wait_for_publish(60)
        t1 = time.perf_counter()
        self.client.publish(topics.file_fin(PROBE, up.upload_id), up.fin_payload, qos=1)
        ack = self._answer(up.upload_id, AckReplyTo.FIN)
        if ack.state is not AckState.COMPLETE:
            raise RuntimeError(f"upload {up.upload_id}: {ack}")
        return init_s, time.perf_counter() - t1, time.time()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def window_clip(path: Path, seconds: int) -> Path:
    """A clip like the agent's: 1280x720 H.264 at 15 fps with a keyframe a second."""
    rng = np.random.default_rng(7)
    base = rng.integers(40, 200, (720, 1280 + seconds * 15 * 2, 3), dtype=np.uint8)
    frames = (np.ascontiguousarray(base[:, i * 2 : i * 2 + 1280]) for i in range(seconds * 15))
    return write_mp4(path, frames, fps=15, bitrate=1_000_000)


# ------------------------------------------------------------------ the run


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ms(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"median {1000 * pct(values, 50):.0f} ms, p99 {1000 * pct(values, 99):.0f} ms, "
        f"max {1000 * max(values):.0f} ms ({len(values)})"
    )


def bare_drain(host: str, port: int, password: str, expected: int, timeout: float) -> float:
    """The bare subscriber's persistent session drained: seconds from connect to last message.
    With ``expected`` 0 it only makes the session and its subscription."""
    got = threading.Event()
    count = 0
    first: list[float] = []

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count >= expected:
            got.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=BARE, clean_session=False)
    client.username_pw_set(BARE, password)
    client.on_message = on_message
    client.on_connect = lambda *a: first.append(time.perf_counter())
    client.connect(host, port)
    client.subscribe(topics.heartbeat(BARE).replace(BARE, "+"), qos=1)
    client.loop_start()
    try:
        if expected == 0:
            time.sleep(0.5)
            return 0.0
        if not got.wait(timeout):
            raise RuntimeError(f"the bare subscriber got {count} of {expected}")
        return time.perf_counter() - first[0]
    finally:
        client.disconnect()
        client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--period", type=float, default=6.0, help="heartbeat period, s")
    parser.add_argument("--steady-s", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=10, help="heartbeats per device")
    parser.add_argument("--clip-s", type=int, default=30, help="length of a checked clip")
    parser.add_argument("--clips", type=int, default=3, help="checked clips in phase 2")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return

    work = Path(tempfile.mkdtemp(prefix="classcam-hb-bench-"))
    devices = [f"hb-{n:05d}" for n in range(args.devices)]
    accounts = BrokerAccounts()
    passwords = {d: accounts.add(d) for d in devices}
    probe_password = accounts.add(PROBE)
    broker = MosquittoBroker(work / "broker", accounts)
    settings: dict[str, Any] = {
        "data_dir": str(work / "server"),
        "mqtt_host": broker.host,
        "mqtt_port": broker.port,
        "mqtt_password": accounts.passwords[SERVER_USER],
        "mqtt_scheduler_password": accounts.passwords[SCHEDULER_USER],
        "mqtt_client_id": SERVER_USER,
        "api_port": 0,
    }
    config = work / "server.json"
    server = Server(config, work / "server-out.json")
    config.write_text(json.dumps({"settings": settings, "out": str(server.out)}))
    fleet_key, probe_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    server_settings = Settings(**settings)
    engine = make_engine(server_settings.database_url)
    migrate(engine)
    factory = make_session_factory(engine, audit.load_key(server_settings.audit_key_file))
    with factory.begin() as db:
        for device_id in devices:
            crud.register_device(db, device_id, public_key_b64(fleet_key))
        crud.register_device(db, PROBE, public_key_b64(probe_key))
    small = work / "small.bin"
    small.write_bytes(os.urandom(48 * 1024))
    clip = window_clip(work / "clip.mp4", args.clip_s)
    rate = args.devices / args.period
    print(
        f"{args.devices} devices, a heartbeat every {args.period:g} s ({rate:.0f} msg/s), "
        f"{os.cpu_count()} cores"
    )
    broker.start()
    try:
        server.start()
        # paho's loop uses select(): its sockets must be opened before the fleet's thousands.
        probe = Probe(broker.host, broker.port, probe_password, probe_key)
        fleet = Fleet(broker.host, broker.port, passwords)
        t = time.perf_counter()
        fleet.connect()
        print(f"{args.devices} device logins connected in {time.perf_counter() - t:.1f} s")
        # Every device online once (its health row made), then the measured phases.
        fleet.steady(args.period, args.period)
        server.wait_stored(fleet.published, 120)

        def phase(name: str, clips: int) -> tuple[list[float], list[float], list[float]]:
            stop = threading.Event()
            inits: list[float] = []
            fins: list[float] = []
            checked: list[float] = []  # when each checked clip's fin was answered

            def probing() -> None:
                try:
                    probe_loop()
                except Exception as exc:  # reported, and the phase goes on without probes
                    print(f"  the probe failed: {exc!r}")

            def probe_loop() -> None:
                done = 0
                while not stop.is_set():
                    if done < clips and len(inits) % 4 == 0:
                        _, _, fin_at = probe.upload(clip, 256 * 1024, args.clip_s)
                        checked.append(fin_at)
                        done += 1
                        continue
                    init_s, fin_s, _ = probe.upload(small, 16 * 1024, 10.0)
                    inits.append(init_s)
                    fins.append(fin_s)
                    time.sleep(0.2)

            published, stored, cpu0 = fleet.published, server.stored, server.cpu()
            t0 = time.perf_counter()
            thread = threading.Thread(target=probing)
            thread.start()
            fleet.steady(args.period, args.steady_s)
            stop.set()
            thread.join()
            server.wait_stored(stored + fleet.published - published, 120)
            seconds = time.perf_counter() - t0
            beats = server.stored - stored
            cpu = server.cpu() - cpu0
            print(
                f"{name}: {beats} heartbeats in {seconds:.1f} s ({beats / seconds:.0f} msg/s), "
                f"server CPU {1e3 * cpu / beats:.2f} ms per heartbeat "
                f"({100 * cpu / seconds:.0f} % of a core)"
            )
            print(f"  upload init->ack: {ms(inits)}")
            print(f"  upload fin->ack:  {ms(fins)}")
            return inits, fins, checked

        steady_from = time.time()
        phase("steady, heartbeats and uploads", 0)
        phase(f"steady, with {args.clips} clip checks", args.clips)
        steady_to = time.time()
        probe.close()
        log = server.stop()
        lags = [s - p for p, s in log["stored"] if steady_from <= p <= steady_to]
        p99_lag_s = pct(lags, 99)
        print(
            f"lag publish->stored over both steady phases: median {1e3 * pct(lags, 50):.0f} ms, "
            f"p99 {1e3 * pct(lags, 99):.0f} ms, max {1e3 * max(lags):.0f} ms  (goal p99 < 1000)"
        )
        with factory() as db:
            checks = db.scalars(select(ClipCheck).where(ClipCheck.checked_at.is_not(None))).all()
            print(f"clip checks done: {len(checks)}")

        # Burst: both subscribers away, their sessions fill, each drains alone. paho's select()
        # takes no descriptor past 1023, so the bare subscriber connects with the fleet closed.
        fleet.close()
        bare_drain(broker.host, broker.port, accounts.passwords[BARE], 0, 10)
        fleet.connect()
        burst = fleet.burst(args.burst)
        fleet.close()  # frees the file descriptors paho's select() needs
        bare_s = bare_drain(broker.host, broker.port, accounts.passwords[BARE], burst, 600)
        server.start()
        cpu0 = server.cpu()
        server.wait_stored(burst, 900)
        cpu = server.cpu() - cpu0
        log = server.stop()
        last = max(s for _, s in log["stored"])
        server_s = last - log["connected_at"][0]
        bare_rate, server_rate = burst / bare_s, burst / server_s
        print(
            f"burst of {burst} queued heartbeats: bare paho subscriber {bare_rate:.0f} msg/s, "
            f"server {server_rate:.0f} msg/s (CPU {1e3 * cpu / burst:.2f} ms per heartbeat); "
            f"ratio {server_rate / bare_rate:.2f}  (goal >= 0.80)"
        )
        command = (
            f".venv/bin/python bench/heartbeat_ingest.py --devices {args.devices} "
            f"--period {args.period:g} --steady-s {args.steady_s:g} --burst {args.burst}"
        )
        report(
            f"heartbeats, {args.devices} devices every {args.period:g} s: issue 11 goals",
            [
                Figure(
                    "heartbeat_rate",
                    f"heartbeat burst drained, {burst} msgs, durable",
                    server_rate,
                    "msg/s",
                    bare_rate,
                    "bare paho sub",
                    ">=",
                    0.8,
                    "ratio",
                    command,
                ),
                Figure(
                    "heartbeat_p99_lag",
                    "heartbeat p99 lag publish → stored (steady)",
                    p99_lag_s,
                    "s",
                    None,
                    "",
                    "<",
                    1.0,
                    "measured",
                    command,
                ),
            ],
        )
    finally:
        if server.process and server.process.poll() is None:
            server.process.kill()
        broker.stop()
        engine.dispose()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
