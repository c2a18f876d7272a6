"""The last step of ``make bench``: every issue-11 figure of this run in one table.

Reads what the benches appended to ``var/bench/figures.jsonl`` (``bench/figures.py``) and
prints the figures in issue 11's order, each with its baseline from the same run, the ratio and
the goal; a figure no bench reported in this run is listed as not measured. Exits 0 either way:
a goal not met is a finding to read, not a broken build.

Run: ``.venv/bin/python bench/summary.py`` (after the benches).
"""

from __future__ import annotations

from figures import FIGURES_FILE, load, table
from rich.console import Console

# Issue 11's figures, in its order: key → what it is (shown when no bench reported it).
ORDER = {
    "clip_ingest_fleet": "clip ingest, M agents → server vs bare paho subscriber",
    "clip_ingest_one": "clip ingest, one agent → server vs bare paho subscriber",
    "clip_ingest_workers_1_local": "clip ingest, 8 agents → 1 worker, file staging, PostgreSQL",
    "clip_ingest_workers_1_database": "clip ingest, 8 agents → 1 worker, database staging",
    "clip_ingest_workers_3_database": "clip ingest, 8 agents → 3 workers, database staging",
    "heartbeat_rate": "heartbeats, processed msg/s vs bare subscriber",
    "heartbeat_p99_lag": "heartbeats, p99 lag publish → stored",
    "cut_60s": "cut a 60 s window vs shutil.copyfile",
    "uplink_wire": "uplink 1 Mbit/s 2 % loss: bytes on wire / clip bytes",
    "uplink_resent": "uplink: bytes re-sent after a link cut",
    "verdict_latency": "verdict latency, last evidence → verdict event",
    "agent_rss_ipcam": "agent peak RSS, IP-camera path",
    "agent_idle_cpu": "agent idle CPU",
}


def main() -> int:
    console = Console(width=200)
    latest = {f.key: f for f in load()}  # a bench run twice: its last figures count
    figures = [latest[key] for key in ORDER if key in latest]
    figures += [f for key, f in latest.items() if key not in ORDER]
    console.print(table(f"issue 11 figures of this run ({FIGURES_FILE})", figures))
    missing = [name for key, name in ORDER.items() if key not in latest]
    for name in missing:
        console.print(f"[yellow]not measured in this run:[/] {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
