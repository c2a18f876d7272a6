"""Clip ingest with several ingest workers on one shared subscription (issue 11 item 3).

8 agents' uploaders (the real upload path: cuts of a real 720p recording, signed, 64 KiB
chunks, QoS 1 over TLS) upload 2 clips each into ``classcam-server run`` alone staging in files,
the same staging in the database, then ``run`` plus two ``classcam-server ingest`` workers
(staging in the database), on PostgreSQL (a schema of its own per run)
and one Mosquitto with the shipped config; the baseline is a bare paho subscriber draining the
same number of bytes through the same broker in the same run (``cut_upload.bare_paho_goodput``).

    .venv/bin/python bench/ingest_workers.py [--agents 8] [--clips 2]

On a 2-core machine three workers share the two cores with the broker, PostgreSQL and the
eight uploaders: the figure says what more processes buy here, not what N machines would.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from cut_upload import _prepared_device, _upload_all, bare_paho_goodput, bench_cut
from figures import Figure, report
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from edge_agent.spool import Spool
from ingest_server.db import make_engine
from simulators.broker import SERVER_USER, MosquittoBroker, ingest_worker_acl
from simulators.harness import ServerProcess

console = Console()
PG_BASE = os.environ.get("CLASSCAM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
EXTRA_WORKERS = ("classcam-ingest-2", "classcam-ingest-3")
# One server process as deployed alone, the same staging in the database, three workers.
RUNS = ((1, "local"), (1, "database"), (3, "database"))


@contextmanager
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema of its own, dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_BASE)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def fleet_into(
    work: Path,
    broker: MosquittoBroker,
    spool: Spool,
    window: tuple[datetime, datetime],
    workers: int,
    staging: str,
    args: argparse.Namespace,
) -> tuple[int, float]:
    """Upload the fleet's clips into ``workers`` workers staging in ``staging``; (bytes,
    seconds)."""
    with pg_schema() as database_url:
        shared = work / "shared"
        env = {
            "CLASSCAM_EVIDENCE_DIR": str(shared / "evidence"),
            "CLASSCAM_AUDIT_KEY_FILE": str(shared / "audit.key"),
            "CLASSCAM_EXPORT_KEY_FILE": str(shared / "export.key"),
            "CLASSCAM_STAGING": staging,
        }
        accounts = (SERVER_USER, *EXTRA_WORKERS)[:workers]
        servers = [
            ServerProcess(
                work / f"worker-{i + 1}",
                broker,
                database_url=database_url,
                command="run" if account == SERVER_USER else "ingest",
                extra_env={
                    **env,
                    "CLASSCAM_MQTT_USERNAME": account,
                    "CLASSCAM_MQTT_PASSWORD": broker.accounts.passwords[account],
                },
            )
            for i, account in enumerate(accounts)
        ]
        primary = servers[0]
        primary.cli("migrate")
        fleet = [
            _prepared_device(
                work, broker, primary, f"w{workers}{staging[0]}-cam-{i}", spool, window, args.clips
            )  # type: ignore[arg-type]
            for i in range(args.agents)
        ]
        try:
            for server in servers:
                server.start()
            return _upload_all(fleet)
        finally:
            for server in servers:
                if server.process is not None:
                    server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--clips", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="classcam-bench-") as tmp:
        work = Path(tmp)
        _, spool, window = bench_cut(work)
        assert isinstance(window, tuple)
        broker = MosquittoBroker(
            work / "broker", extra_acl="".join(ingest_worker_acl(u) for u in EXTRA_WORKERS)
        )
        for account in EXTRA_WORKERS:
            broker.add_account(account)
        broker.start()
        try:
            results: dict[tuple[int, str], tuple[int, float]] = {}
            for workers, staging in RUNS:
                console.print(
                    f"{args.agents} agents into {workers} worker(s), staging: {staging} …"
                )
                results[(workers, staging)] = fleet_into(
                    work / f"run-{workers}-{staging}", broker, spool, window, workers, staging, args
                )
            total = max(size for size, _ in results.values())
            bare = bare_paho_goodput(broker, total)
        finally:
            broker.stop()
    rates = {run: size / seconds / 1e6 for run, (size, seconds) in results.items()}
    table = Table(title="clip ingest by workers and staging (PostgreSQL)")
    for column in ("workers", "staging", "bytes", "seconds", "MB/s", "vs bare paho"):
        table.add_column(column, justify="right")
    for (n, staging), (size, seconds) in results.items():
        table.add_row(
            str(n),
            staging,
            f"{size / 1e6:.1f} MB",
            f"{seconds:.1f}",
            f"{rates[(n, staging)]:.1f}",
            f"{rates[(n, staging)] / bare:.2f}",
        )
    console.print(table)
    command = ".venv/bin/python bench/ingest_workers.py"
    report(
        "ingest workers: issue 11 goals",
        [
            Figure(
                f"clip_ingest_workers_{n}_{staging}",
                f"clip ingest, {args.agents} agents → {n} worker(s), {staging} staging, PostgreSQL",
                rates[(n, staging)],
                "MB/s",
                bare,
                "bare paho sub",
                ">=",
                0.8,
                "ratio",
                command,
            )
            for n, staging in RUNS
        ],
        console,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
