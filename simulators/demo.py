"""``make demo``: the evidence path end to end on one machine with embedded defaults.

A local broker (Mosquitto when installed, else amqtt speaking MQTT 3.1.1), the server on SQLite
and a filesystem evidence store, one provisioned device with a synthetic camera. It records,
cuts a window, uploads it, and shows where the verified clip is.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.clock import to_utc
from simulators.broker import BrokerAccounts, EmbeddedBroker, MosquittoBroker, mosquitto_available
from simulators.harness import Device, ServerProcess, provision_device

console = Console()


def _record_with_progress(device: Device, seconds: float, fast: bool) -> datetime:
    args = ["record", "--seconds", str(seconds)] + (["--virtual-clock"] if fast else [])
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["out"] = device.cli(*args, timeout=seconds * 4 + 120).stdout
        except Exception as exc:  # shown below, after the progress bar ends
            result["error"] = exc

    worker = threading.Thread(target=work)
    worker.start()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task(
            f"recording {seconds:.0f} s from the synthetic camera", total=seconds
        )
        started = time.monotonic()
        while worker.is_alive():
            progress.update(task, completed=min(seconds, time.monotonic() - started))
            time.sleep(0.2)
        progress.update(task, completed=seconds)
    worker.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return to_utc(datetime.fromisoformat(str(result["out"]).split()[0]))


def _show_api(server: ServerProcess) -> None:
    """The API answers nobody without a token; an admin token made by the CLI reads the fleet."""
    import httpx

    token = server.api_token("admin")
    anonymous = httpx.get(f"{server.api_url}/devices", timeout=10)
    devices = httpx.get(
        f"{server.api_url}/devices", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    console.print(
        f"API {server.api_url}: without a token GET /devices is {anonymous.status_code}; with "
        f"an admin token (classcam-server token create --role admin) {devices.status_code}, "
        f"{len(devices.json()) if devices.status_code == 200 else 0} device(s)"
    )


def run_demo(workdir: Path, seconds: float, fast: bool, keep: bool) -> int:
    if workdir.exists() and not keep:
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    accounts = BrokerAccounts()
    if mosquitto_available():
        broker: MosquittoBroker | EmbeddedBroker = MosquittoBroker(workdir / "broker", accounts)
        protocol, shared = "5", "ingest"
    else:
        console.print(
            "[yellow]Mosquitto is not installed: using the embedded amqtt broker "
            "(MQTT 3.1.1, demo only)"
        )
        broker = EmbeddedBroker(workdir / "broker", accounts)
        protocol, shared = "3.1.1", None
    broker.start()
    console.print(
        f"broker: {type(broker).__name__} on {broker.host}:{broker.port} (MQTT {protocol})"
    )
    server = ServerProcess(workdir / "server", broker, protocol=protocol, shared_group=shared)
    try:
        server.cli("migrate")
        device = provision_device(
            workdir / "devices",
            "demo-cam-01",
            broker,
            protocol=protocol,
            settings={"camera": {"width": 1280, "height": 720}},
        )
        server.register_device(device.device_id, device.public_key)
        server.start()
        console.print(f"server: consuming; database {server.db_url}")
        start = _record_with_progress(device, seconds, fast)
        req_start = start + timedelta(seconds=seconds / 3)
        req_end = start + timedelta(seconds=2 * seconds / 3)
        upload_id = device.cli(
            "cut", "--start", req_start.isoformat(), "--end", req_end.isoformat()
        ).stdout.strip()
        console.print(
            f"cut window {req_start:%H:%M:%S}–{req_end:%H:%M:%S} UTC into upload {upload_id}"
        )
        began = time.monotonic()
        device.cli("upload", "--until-empty", timeout=300)
        took = time.monotonic() - began
        with sqlite3.connect(server.db_url.removeprefix("sqlite:///")) as db:
            row = db.execute(
                "SELECT path, sha256, size, cut_start, cut_end, duration_s"
                " FROM clips WHERE upload_id = ?",
                (upload_id,),
            ).fetchone()
        if row is None:
            console.print("[red]the clip was not stored; server log:\n" + server.tail_log())
            return 1
        path = server.evidence_dir / row[0]
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        table = Table(title="verified clip", show_header=False)
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")
        table.add_row("file", str(path))
        table.add_row("sha256", row[1])
        table.add_row("re-hashed", "[green]matches[/green]" if actual == row[1] else "[red]DIFFERS")
        table.add_row("size", f"{row[2]:,} bytes, uploaded in {took:.1f} s")
        table.add_row("window asked", f"{req_start.isoformat()} → {req_end.isoformat()}")
        table.add_row("window cut", f"{row[3]} → {row[4]} ({row[5]:.1f} s)")
        console.print(table)
        # Plain lines too, for scripts and for terminals narrower than the table.
        print(f"clip: {path}\nsha256: {row[1]}")
        _show_api(server)
        return 0 if actual == row[1] else 1
    finally:
        server.stop()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="classcam-sim demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"))
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--fast", action="store_true", help="record on a virtual clock, as fast as the encoder goes"
    )
    parser.add_argument("--keep", action="store_true", help="keep the previous demo's state")
    args = parser.parse_args(argv)
    return run_demo(args.workdir, args.seconds, args.fast, args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
