"""What an export costs when its audit chain is long: time and peak RSS of ``classcam-server
export`` and of ``verify.py`` on the archive, for a session whose first audit entry lies
``--rows`` rows before the head.

``audit/chain.json`` runs from the exported session's first audit entry to the head (each row
``[seq, prev_hash, hash]``, about 150 bytes), so a session exported long after it was created on
a busy server carries every row written since. This builds a SQLite database with one session
(no clips: the chain is what is measured), an audit entry about it, then ``--rows`` entries
about other subjects, hash-chained with the server's audit key exactly as ``audit.record``
would chain them; then runs the export through the CLI and ``verify.py`` on the result, each in
a process of its own, and prints wall time, peak RSS and the archive's and chain's sizes.

Run: ``.venv/bin/python bench/export_chain.py [--rows 200000]`` (docs/export.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, select

from common.signing import generate_private_key, public_key_b64
from ingest_server import audit
from ingest_server.db import make_engine, make_session_factory, migrate
from ingest_server.models import AuditEntry, AuditHead
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows

SESSION = "bench-session"
BATCH = 10_000
# Runs ``code`` (with argv) and reports its own peak RSS on the last line of stderr.
MEASURED = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    {call}
finally:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def _setup(root: Path, start: datetime) -> Path:
    path = root / "setup.json"
    path.write_text(
        json.dumps(
            {
                "institutions": [{"id": "school", "name": "学校"}],
                "classrooms": [
                    {
                        "id": "room",
                        "institution_id": "school",
                        "name": "101",
                        "lat": 31.23,
                        "lon": 121.47,
                        "datum": "wgs84",
                    }
                ],
                "devices": [
                    {
                        "device_id": "dev-1",
                        "classroom_id": "room",
                        "public_key": public_key_b64(generate_private_key()),
                    }
                ],
                "lecturers": [
                    {"id": "lect", "institution_id": "school", "name": "王老师", "token": "t" * 32}
                ],
                "classes": [{"id": "cls", "institution_id": "school", "name": "电工"}],
                "sessions": [
                    {
                        "id": SESSION,
                        "classroom_id": "room",
                        "start": start.isoformat(),
                        "class_id": "cls",
                        "lecturer_id": "lect",
                        "duration_min": 30,
                    }
                ],
            }
        )
    )
    return path


def build(root: Path, rows: int) -> Settings:
    """A database whose head lies ``rows`` audit rows after the session's first entry."""
    settings = Settings(data_dir=root, database_url=f"sqlite:///{root / 'classcam.db'}")
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    key = audit.load_key(settings.audit_key_file)
    factory = make_session_factory(engine, key)
    start = datetime.now(UTC) - timedelta(days=1)
    with factory.begin() as db:
        import_rows(db, read_rows(_setup(root, start)), settings)
        audit.record(db, "viewed", "session", SESSION, "bench", {"why": "an entry to export"})
    with factory.begin() as db:
        head = db.scalar(select(AuditHead).where(AuditHead.id == audit.HEAD_ID))
        assert head is not None
        seq, prev, at = head.seq, head.hash, datetime.now(UTC)
        while rows:
            batch = []
            for _ in range(min(rows, BATCH)):
                seq += 1
                fields = ("viewed", "session", f"other-{seq % 997}", "bench", '{"n":1}')
                digest = audit.entry_hash(key, seq, at, *fields, prev)
                batch.append(
                    dict(
                        zip(
                            ("seq", "at", "action", "subject_type", "subject_id", "actor"),
                            (seq, at, *fields[:4]),
                            strict=True,
                        )
                    )
                    | {"details": fields[4], "prev_hash": prev, "hash": digest}
                )
                prev = digest
            db.execute(insert(AuditEntry), batch)
            rows -= len(batch)
        head.seq, head.hash = seq, prev
    engine.dispose()
    return settings


def measured(call: str, argv: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and stdout of ``call`` run in a fresh interpreter."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURED.format(call=call), *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{call} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed, int(done.stderr.strip().splitlines()[-1]), done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument(
        "--verify",
        type=Path,
        default=Path(__file__).parents[1] / "ingest_server" / "export_verify.py",
        help="the verify.py to run (default: the repository's; e.g. an older one to compare)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        settings = build(root, args.rows)
        print(f"built {args.rows} audit rows in {time.perf_counter() - began:.1f} s")
        archive = root / "out" / "case.zip"
        archive.parent.mkdir()
        cli_args = ["--data-dir", str(root), "--database-url", settings.database_url]
        export_s, export_kib, _ = measured(
            "from ingest_server import cli; sys.exit(cli.main(sys.argv))",
            [*cli_args, "export", "--session", SESSION, "--out", str(archive)],
        )
        verify_s, verify_kib, out = measured(
            "runpy.run_path(sys.argv[0], run_name='__main__')",
            [str(args.verify), str(archive), "--lang", "en"],
        )
        with zipfile.ZipFile(archive) as zf:
            chain = zf.getinfo("audit/chain.json").file_size
        lines = out.strip().splitlines()
        print(lines[-3], lines[-1], sep="\n")
        print(
            f"chain.json {chain / 1e6:.1f} MB, archive "
            f"{archive.stat().st_size / 1e6:.1f} MB\n"
            f"export: {export_s:.1f} s, peak RSS {export_kib / 1024:.0f} MiB\n"
            f"verify: {verify_s:.1f} s, peak RSS {verify_kib / 1024:.0f} MiB"
        )


if __name__ == "__main__":
    main()
