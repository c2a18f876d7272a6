"""A clip's upload over a shaped 1 Mbit/s uplink with 2 % loss: what it puts on the wire, and
what it sends again after the link is cut mid-upload.

The real agent uploader (``edge_agent.uplink``) talks to a real Mosquitto and the real server
through ``simulators.netlink.ShapedLink``, the fault-injecting relay the replays use: 125,000
bytes/s each way, 50 ms latency, 2 % of TCP segments lost. The relay runs over loopback TCP,
which loses nothing, so a lost segment costs what it costs a TCP flow: a retransmission timeout,
and here also its 1460 bytes counted once more on the wire (the relay notes the time lost, from
which the number of lost segments follows). Bytes are TCP payload (MQTT and everything above);
IP and TCP headers are not counted (about 40-52 bytes per 1460-byte segment on a real link).

1. Clean run: bytes the device sent up the link (plus the modelled retransmissions) / the
   clip's bytes. Goal (issue 11) ≤ 1.05.
2. Cut runs: the same clip, the link cut when 30 %, 50 %, 70 % ... of it has crossed (one cut
   per run, ``--cuts`` runs) and restored 3 s later; the upload resumes (paho re-sends what was
   in flight, the uploader what the server says it still lacks). Bytes re-sent = uplink bytes
   of the cut run − those of the clean run (same clip size); the figure is the worst run.
   Goal ≤ one chunk (64 KiB).

Run: ``.venv/bin/python bench/uplink_link.py [--seconds 15]`` (about a minute; ``make bench``).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from figures import Figure, report
from rich.console import Console
from rich.table import Table

from common.clock import SystemClock, VirtualClock
from common.schemas import AckState
from common.signing import load_private_key
from edge_agent.camera import SyntheticCamera
from edge_agent.clips import ClipRequest, cut_and_enqueue
from edge_agent.config import load_config
from edge_agent.outbox import Outbox
from edge_agent.recorder import Recorder
from edge_agent.spool import Spool
from edge_agent.uplink import MqttLink, Uploader
from simulators.broker import MosquittoBroker
from simulators.harness import ServerProcess, provision_device
from simulators.netlink import MIN_RTO_S, SEGMENT_BYTES, ShapedLink

console = Console()
RATE = 125_000  # 1 Mbit/s
LOSS_PCT = 2.0
LATENCY_S = 0.05
CUT_DOWN_S = 3.0


def record(work: Path, seconds: int) -> tuple[Spool, tuple[datetime, datetime]]:
    """``seconds`` + 5 s of 720p15 recorded by the agent's recorder; the window to cut."""
    clock = VirtualClock()
    spool = Spool(work / "spool")
    camera = SyntheticCamera("bench-cam", width=1280, height=720, fps=15.0, clock=clock)
    start = clock.now()
    Recorder(camera, spool, clock).record_for(seconds + 5)
    return spool, (start + timedelta(seconds=2), start + timedelta(seconds=2 + seconds))


def upload_once(
    work: Path,
    broker: MosquittoBroker,
    server: ServerProcess,
    spool: Spool,
    window: tuple[datetime, datetime],
    name: str,
    *,
    cut_at: float | None,
) -> dict[str, float]:
    """Upload one clip through a fresh shaped link; with ``cut_at``, cut it when that share of
    the clip has crossed."""
    link = ShapedLink(
        broker.host,
        broker.port,
        rate_bytes_per_s=RATE,
        latency_s=LATENCY_S,
        loss_pct=LOSS_PCT,
        seed=11,
    ).start()
    device = provision_device(
        work / "devices",
        name,
        broker,
        settings={"broker": {"port": link.port}, "upload": {"retry_min_s": 1.0}},
    )
    server.register_device(device.device_id, device.public_key)
    config = load_config(device.config_path)
    outbox = Outbox(config.outbox_dir)
    item = cut_and_enqueue(
        spool,
        outbox,
        load_private_key(config.keys.private_key_file),
        ClipRequest(*window),
        device_id=config.device_id,
        chunk_size=config.upload.chunk_size,
        clock=SystemClock(),
    )
    mqtt_link = MqttLink(config, config.broker_password())
    uploader = Uploader(mqtt_link, outbox, config.upload)
    mqtt_link.start()
    mqtt_link.wait_connected(30)
    up0 = link.bytes_up  # the connection's own bytes are not the clip's
    cutter = None
    if cut_at is not None:

        def cut_half_way() -> None:
            while link.bytes_up - up0 < item.size * cut_at:
                time.sleep(0.02)
            link.cut()
            time.sleep(CUT_DOWN_S)
            link.restore()

        cutter = threading.Thread(target=cut_half_way, daemon=True)
        cutter.start()
    began = time.perf_counter()
    attempts = 0
    try:
        while True:
            attempts += 1
            if uploader.upload(item) == AckState.COMPLETE:
                break
            if attempts > 20:
                raise RuntimeError(f"{name}: no complete upload after {attempts} attempts")
        took = time.perf_counter() - began
    finally:
        mqtt_link.stop()
        link.stop()
    lost_segments = round(link.retransmissions_s / (MIN_RTO_S + 2 * LATENCY_S))
    return {
        "size": item.size,
        "chunk": item.chunk_size,
        "up": link.bytes_up - up0,
        "down": link.bytes_down,
        "retransmitted": lost_segments * SEGMENT_BYTES,
        "chunk_bytes_sent": uploader.stats.bytes_sent,
        "attempts": attempts,
        "seconds": took,
        "cut_at": cut_at or 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=15, help="length of the clip")
    parser.add_argument("--cuts", type=int, default=3, help="runs with a link cut")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="classcam-uplink-") as tmp:
        work = Path(tmp)
        console.print(f"recording {args.seconds + 5} s of 720p15 …")
        spool, window = record(work, args.seconds)
        broker = MosquittoBroker(work / "broker")
        broker.start()
        server = ServerProcess(work / "server", broker)
        try:
            server.cli("migrate")
            server.start()
            clean = upload_once(work, broker, server, spool, window, "uplink-clean", cut_at=None)
            cuts = [
                upload_once(work, broker, server, spool, window, f"uplink-cut-{n}", cut_at=at)
                for n, at in enumerate(
                    0.3 + 0.4 * n / max(1, args.cuts - 1) for n in range(args.cuts)
                )
            ]
        finally:
            server.stop()
            broker.stop()
    wire = (clean["up"] + clean["retransmitted"]) / clean["size"]
    for cut in cuts:
        cut["resent"] = cut["up"] - clean["up"] + (cut["size"] - clean["size"])
    clean["resent"] = 0
    resent = max(cut["resent"] for cut in cuts)
    table = Table(title="uplink over a shaped 1 Mbit/s link, 2 % loss, 50 ms")
    table.add_column("figure")
    table.add_column("clean", justify="right")
    for cut in cuts:
        table.add_column(f"cut at {cut['cut_at']:.0%} for 3 s", justify="right")
    for label, key, fmt in (
        ("clip bytes", "size", "{:,.0f}"),
        ("uplink TCP payload", "up", "{:,.0f}"),
        ("  + modelled retransmitted segments", "retransmitted", "{:,.0f}"),
        ("downlink TCP payload", "down", "{:,.0f}"),
        ("chunk bytes the uploader published", "chunk_bytes_sent", "{:,.0f}"),
        ("upload attempts", "attempts", "{:.0f}"),
        ("bytes re-sent (vs clean)", "resent", "{:,.0f}"),
        ("seconds", "seconds", "{:.1f}"),
    ):
        table.add_row(label, *(fmt.format(run[key]) for run in (clean, *cuts)))
    console.print(table)
    command = f".venv/bin/python bench/uplink_link.py --seconds {args.seconds} --cuts {args.cuts}"
    report(
        "uplink: issue 11 goals",
        [
            Figure(
                "uplink_wire",
                "uplink bytes on wire (TCP payload + retrans.)",
                clean["up"] + clean["retransmitted"],
                "B",
                clean["size"],
                "clip bytes",
                "<=",
                1.05,
                "ratio",
                command,
            ),
            Figure(
                "uplink_resent",
                f"uplink bytes re-sent after a 3 s link cut (worst of {len(cuts)})",
                resent,
                "B",
                clean["chunk"],
                "one chunk",
                "<=",
                1.0,
                "ratio",
                command,
            ),
        ],
        console,
    )
    console.print(f"bytes on wire / clip bytes: {wire:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
