"""Ingest consumer throughput: paho with manual ack (ack after commit) against the aiomqtt
consumer it replaced (ack on receipt), on the same Mosquitto in the same run.

    .venv/bin/python bench/consumer_ack.py [--chunks 3000] [--chunk-kib 64] [--events 20000]

For each workload a device login fills the consumer's persistent session at the broker while the
consumer is away (QoS 1), then the consumer connects and the time to drain it is measured, with
the process CPU time. The processor does nothing (handle and flush return at once), so the
figures are the MQTT client's own cost: the ceiling each client puts on ingest. The baseline is
a faithful copy of the old consumer's loop (aiomqtt, batches of up to 64 handed to one worker
thread, flush when the queue runs dry); ratios are new / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common import topics
from common.clock import SystemClock
from ingest_server.consumer import IngestConsumer
from ingest_server.ingest import Outgoing
from ingest_server.settings import Settings
from simulators.broker import SERVER_USER, MosquittoBroker

DEVICE = "bench-dev"


class NullProcessor:
    """Counts messages; no disk, no database."""

    def __init__(self) -> None:
        self.handled = 0
        self.done = threading.Event()
        self.expected = 0
        self.clock = SystemClock()  # the consumer times each message's wait on it

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        self.handled += 1
        if self.handled >= self.expected:
            self.done.set()
        return []

    def flush(self) -> list[Outgoing]:
        return []


@dataclass
class Result:
    seconds: float
    cpu: float
    messages: int
    payload_bytes: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def mb_s(self) -> float:
        return self.payload_bytes / self.seconds / 1e6


def fill(broker: MosquittoBroker, password: str, messages: list[tuple[str, bytes]]) -> None:
    """Publish ``messages`` at QoS 1 as the device and wait for every PUBACK."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=mqtt.MQTTv5)
    client.username_pw_set(DEVICE, password)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(120)
    finally:
        client.disconnect()
        client.loop_stop()


def run_paho(settings: Settings, processor: NullProcessor, timeout: float) -> tuple[float, float]:
    consumer = IngestConsumer(settings, processor)  # type: ignore[arg-type]
    t0, c0 = time.perf_counter(), time.process_time()
    consumer.start()
    try:
        if not processor.done.wait(timeout):
            raise RuntimeError(f"paho consumer handled {processor.handled}/{processor.expected}")
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        consumer.stop()


def run_aiomqtt(
    settings: Settings, processor: NullProcessor, timeout: float
) -> tuple[float, float]:
    """The replaced consumer's loop: aiomqtt acks on receipt, batches go to one thread."""

    async def consume() -> tuple[float, float]:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = settings.mqtt_session_expiry_s
        client = aiomqtt.Client(
            settings.mqtt_host,
            settings.mqtt_port,
            username=settings.mqtt_username,
            password=settings.mqtt_secret(),
            identifier=settings.mqtt_client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
        )
        executor = ThreadPoolExecutor(max_workers=1)
        loop = asyncio.get_running_loop()

        def process(batch: list[aiomqtt.Message], idle: bool) -> None:
            for message in batch:
                processor.handle(message.topic.value, bytes(message.payload))
            if idle:
                processor.flush()

        t0, c0 = time.perf_counter(), time.process_time()
        async with client:
            await client.subscribe(topics.up_all(settings.shared_group), qos=1)
            messages = client.messages
            while not processor.done.is_set():
                batch = [await asyncio.wait_for(anext(messages), timeout)]
                while len(batch) < 64 and len(messages) > 0:
                    batch.append(await anext(messages))
                await loop.run_in_executor(executor, process, batch, len(messages) == 0)
        executor.shutdown()
        return time.perf_counter() - t0, time.process_time() - c0

    return asyncio.run(consume())


def measure(
    name: str,
    runner: Callable[[Settings, NullProcessor, float], tuple[float, float]],
    broker: MosquittoBroker,
    settings: Settings,
    password: str,
    messages: list[tuple[str, bytes]],
) -> Result:
    # First connection makes the persistent session and its subscription; then fill it.
    warm = NullProcessor()
    warm.expected = 1
    with contextlib.suppress(RuntimeError, TimeoutError, asyncio.TimeoutError):
        runner(settings, warm, 1.0)
    fill(broker, password, messages)
    processor = NullProcessor()
    processor.expected = len(messages)
    seconds, cpu = runner(settings, processor, 120.0)
    return Result(seconds, cpu, len(messages), sum(len(p) for _, p in messages))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=3000)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--event-bytes", type=int, default=200)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="classcam-bench-"))
    broker = MosquittoBroker(work / "broker")
    broker.start()
    try:
        password = broker.add_account(DEVICE)
        chunk = os.urandom(args.chunk_kib * 1024)
        event = b"x" * args.event_bytes
        workloads = {
            f"{args.chunk_kib} KiB chunks": [
                (topics.file_chunk(DEVICE, "up-bench", n * len(chunk)), chunk)
                for n in range(args.chunks)
            ],
            f"{args.event_bytes} B events": [(topics.event(DEVICE), event)] * args.events,
        }
        base: dict[str, Any] = {
            "mqtt_host": broker.host,
            "mqtt_port": broker.port,
            "mqtt_password": broker.accounts.passwords[SERVER_USER],
            "mqtt_protocol": "5",
            "shared_group": "ingest",
        }
        print(
            f"{'workload':<18} {'consumer':<26} {'msg/s':>9} {'MB/s':>8} {'CPU %':>6} {'ratio':>6}"
        )
        for workload, messages in workloads.items():
            results: dict[str, Result] = {}
            for name, runner, client_id in (
                ("aiomqtt, ack on receipt", run_aiomqtt, "bench-aiomqtt"),
                ("paho, ack after commit", run_paho, "bench-paho"),
            ):
                settings = Settings(data_dir=work, **base, mqtt_client_id=client_id)
                results[name] = measure(name, runner, broker, settings, password, messages)
            baseline = results["aiomqtt, ack on receipt"]
            for name, result in results.items():
                cpu = 100 * result.cpu / result.seconds
                ratio = result.rate / baseline.rate
                print(
                    f"{workload:<18} {name:<26} {result.rate:>9.0f} {result.mb_s:>8.1f}"
                    f" {cpu:>6.0f} {ratio:>6.2f}"
                )
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
