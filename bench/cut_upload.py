"""Cut and upload figures, each a ratio against a baseline measured in the same run.

1. Cutting a 60 s window out of the spool by stream copy vs ``shutil.copyfile`` of the same bytes.
2. Upload goodput of a clip through the real agent uploader, broker and server (verified,
   stored, recorded) vs a bare paho publisher → paho subscriber moving the same bytes in
   64 KiB QoS 1 messages on the same broker.

Run with ``make bench``.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from figures import Figure, report
from rich.console import Console
from rich.table import Table

from common.clock import SystemClock, VirtualClock
from common.signing import load_private_key
from edge_agent.camera import SyntheticCamera
from edge_agent.clips import ClipRequest, cut_and_enqueue
from edge_agent.config import load_config
from edge_agent.cutter import cut_window
from edge_agent.outbox import Outbox, OutboxItem
from edge_agent.recorder import Recorder
from edge_agent.spool import Spool
from edge_agent.uplink import MqttLink, Uploader
from simulators.broker import SERVER_USER, MosquittoBroker
from simulators.harness import ServerProcess, provision_device

console = Console()
REPEATS = 5


def timed(fn, repeats: int = REPEATS) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def bench_cut(work: Path) -> tuple[dict[str, float], Spool, object]:
    clock = VirtualClock()
    spool = Spool(work / "spool")
    camera = SyntheticCamera("bench-cam", width=1280, height=720, fps=15.0, clock=clock)
    start = clock.now()
    console.print("recording 70 s of 720p on a virtual clock …")
    began = time.perf_counter()
    Recorder(camera, spool, clock).record_for(70)
    record_s = time.perf_counter() - began
    w_start, w_end = start + timedelta(seconds=5), start + timedelta(seconds=65)
    out, copy = work / "cut.mp4", work / "copy.mp4"
    cut_s = timed(lambda: cut_window(spool, w_start, w_end, out))
    size = out.stat().st_size
    copy_s = timed(lambda: shutil.copyfile(out, copy))
    figures = {
        "record_70s_s": record_s,
        "cut_60s_ms": cut_s * 1000,
        "copyfile_ms": copy_s * 1000,
        "cut_vs_copy": cut_s / copy_s,
        "clip_mb": size / 1e6,
    }
    return figures, spool, (w_start, w_end)


def bare_paho_goodput(broker: MosquittoBroker, total_bytes: int, chunk: int = 65536) -> float:
    """MB/s of QoS 1 chunk messages from one paho client to another, through ``broker``.

    The broker drops QoS 1 messages past a subscriber's queue limit when the subscriber falls
    behind, so the rate is of the bytes that arrived, up to the last arrival (waiting until
    every message came or none came for 3 s); drops are reported."""
    n = max(1, total_bytes // chunk)
    count = 0
    last = 0.0

    def on_message(client, userdata, message):  # type: ignore[no-untyped-def]
        nonlocal count, last
        count += 1
        last = time.perf_counter()

    broker.add_account("bench-pub")
    sub = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=mqtt.MQTTv311
    )
    sub.username_pw_set(SERVER_USER, broker.accounts.passwords[SERVER_USER])
    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe("classcam/v1/up/bench-pub/#", qos=1)
    sub.loop_start()
    pub = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv311
    )
    pub.username_pw_set("bench-pub", broker.accounts.passwords["bench-pub"])
    pub.max_inflight_messages_set(16)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    time.sleep(0.5)
    payload = b"\x5a" * chunk
    began = time.perf_counter()
    for i in range(n):
        pub.publish(f"classcam/v1/up/bench-pub/file/b/chunk/{i * chunk}", payload, qos=1)
    seen = -1
    while count < n and count != seen:
        seen = count
        time.sleep(3)
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()
    if count < n:
        console.print(f"[yellow]bare paho: the broker dropped {n - count} of {n} messages")
    return count * chunk / (last - began) / 1e6


def _prepared_device(
    work: Path,
    broker: MosquittoBroker,
    server: ServerProcess,
    name: str,
    spool: Spool,
    window: tuple,
    clips: int,
) -> tuple[Uploader, list[OutboxItem]]:  # type: ignore[type-arg]
    device = provision_device(work / "devices", name, broker)
    server.register_device(device.device_id, device.public_key)
    config = load_config(device.config_path)
    outbox = Outbox(config.outbox_dir)
    key = load_private_key(config.keys.private_key_file)
    items = [
        cut_and_enqueue(
            spool,
            outbox,
            key,
            ClipRequest(*window),
            device_id=config.device_id,
            chunk_size=config.upload.chunk_size,
            clock=SystemClock(),
        )
        for _ in range(clips)
    ]
    link = MqttLink(config, config.broker_password())
    return Uploader(link, outbox, config.upload), items


def _upload_all(devices: list[tuple[Uploader, list[OutboxItem]]]) -> tuple[int, float]:
    """Upload every device's clips, devices side by side; (bytes, seconds)."""
    for uploader, _ in devices:
        uploader.link.start()
        uploader.link.wait_connected(10)
    results: list[str] = []

    def run(uploader: Uploader, items: list[OutboxItem]) -> None:
        for item in items:
            state = uploader.upload(item)
            results.append(state.value if state else "none")

    threads = [threading.Thread(target=run, args=d) for d in devices]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - began
    for uploader, _ in devices:
        uploader.link.stop()
    assert set(results) == {"complete"}, results
    return sum(i.size for _, items in devices for i in items), took


def bench_upload(work: Path, spool: Spool, window: tuple) -> dict[str, float]:  # type: ignore[type-arg]
    broker = MosquittoBroker(work / "broker")
    broker.start()
    server = ServerProcess(work / "server", broker)
    try:
        server.cli("migrate")
        one = [_prepared_device(work, broker, server, "bench-cam-0", spool, window, 3)]
        fleet = [
            _prepared_device(work, broker, server, f"bench-cam-{i}", spool, window, 2)
            for i in range(1, 9)
        ]
        server.start()
        one_bytes, one_s = _upload_all(one)
        fleet_bytes, fleet_s = _upload_all(fleet)
        # The bare pair alone on the broker: the server, subscribed to up/#, would otherwise
        # take the same bytes as chunks of an unknown upload and compete for the two cores.
        server.stop()
        bare = bare_paho_goodput(broker, fleet_bytes)
        return {
            "upload_mb": one_bytes / 1e6,
            "agent_to_stored_mb_s": one_bytes / one_s / 1e6,
            "fleet_mb": fleet_bytes / 1e6,
            "fleet_mb_s": fleet_bytes / fleet_s / 1e6,
            "bare_paho_mb_s": bare,
            "ours_vs_bare": one_bytes / one_s / 1e6 / bare,
            "fleet_vs_bare": fleet_bytes / fleet_s / 1e6 / bare,
        }
    finally:
        if server.process is not None:
            server.stop()
        broker.stop()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="classcam-bench-") as tmp:
        work = Path(tmp)
        cut, spool, window = bench_cut(work)
        up = bench_upload(work, spool, window)
    table = Table(title="cut and upload (medians; ratios within this run)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("record 70 s 720p15 (virtual clock, real encode)", f"{cut['record_70s_s']:.1f} s")
    table.add_row("60 s clip size", f"{cut['clip_mb']:.2f} MB")
    table.add_row("cut 60 s window (stream copy)", f"{cut['cut_60s_ms']:.1f} ms")
    table.add_row("shutil.copyfile of the same bytes", f"{cut['copyfile_ms']:.2f} ms")
    table.add_row("[bold]cut / copyfile", f"[bold]{cut['cut_vs_copy']:.1f}x")
    table.add_row("one device, 3 clips in a row", f"{up['upload_mb']:.1f} MB")
    table.add_row("  agent → verified, stored, recorded", f"{up['agent_to_stored_mb_s']:.1f} MB/s")
    table.add_row("8 devices side by side, 2 clips each", f"{up['fleet_mb']:.1f} MB")
    table.add_row("  fleet → verified, stored, recorded", f"{up['fleet_mb_s']:.1f} MB/s")
    table.add_row("bare paho → paho, 64 KiB QoS 1", f"{up['bare_paho_mb_s']:.1f} MB/s")
    table.add_row("[bold]one device / bare paho", f"[bold]{up['ours_vs_bare']:.2f}")
    table.add_row("[bold]fleet / bare paho", f"[bold]{up['fleet_vs_bare']:.2f}")
    console.print(table)
    command = ".venv/bin/python bench/cut_upload.py"
    report(
        "cut and upload: issue 11 goals",
        [
            Figure(
                "cut_60s",
                "cut a 60 s window (stream copy)",
                cut["cut_60s_ms"],
                "ms",
                cut["copyfile_ms"],
                "shutil.copyfile",
                "<=",
                3.0,
                "ratio",
                command,
            ),
            Figure(
                "clip_ingest_fleet",
                "clip ingest, 8 agents → stored",
                up["fleet_mb_s"],
                "MB/s",
                up["bare_paho_mb_s"],
                "bare paho sub",
                ">=",
                0.8,
                "ratio",
                command,
            ),
            Figure(
                "clip_ingest_one",
                "clip ingest, 1 agent → stored",
                up["agent_to_stored_mb_s"],
                "MB/s",
                up["bare_paho_mb_s"],
                "bare paho sub",
                ">=",
                0.8,
                "ratio",
                command,
            ),
        ],
        console,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
