"""``classcam-sim replay SCENARIO --broker URL --server URL --token T`` on a broker and a server
the replay did not start, run as an operator runs them (docs/scenarios.md, "On a running broker
and server"): Mosquitto with the shipped config, ACL and the server's accounts; the real server
on the shared simulated clock (``simulators.sim_server run``), started before the replay with
``CLASSCAM_SIM_CLOCK`` naming the clock file of the replay's fresh workdir, on its own SQLite
database; an admin token from ``classcam-server token create``. While the replay waits, the
broker's administrator adds the device accounts the replay writes to ``broker-accounts.json``.

``tests/simulators/remote-replay.yaml``: one camera, an honest four-minute class and a class
whose opening photo is taken 600 m away; about a minute of real time.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from ingest_server.settings import Settings
from simulators.broker import MosquittoBroker, stop_process
from simulators.harness import ServerProcess
from simulators.scenario_load import load_scenario
from simulators.school import wait_until
from simulators.sim_server import CLOCK_ENV

pytestmark = [pytest.mark.replay, pytest.mark.timeout(240)]

SCENARIO = Path(__file__).with_name("remote-replay.yaml")
REPLAY_TIMEOUT_S = 180
WINDOWS = Settings.model_fields["windows_per_session"].default


def add_new_accounts(broker: MosquittoBroker, accounts_file: Path) -> None:
    """The broker administrator's part: every account of the replay's file that the broker
    does not know yet is added (``mosquitto_passwd`` and a reload, as ``add_account`` does)."""
    if not accounts_file.exists():
        return
    with contextlib.suppress(json.JSONDecodeError):  # caught while the replay writes it
        for user, password in json.loads(accounts_file.read_text()).items():
            if broker.accounts.passwords.get(user) != password:
                broker.add_account(user, password)


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path}: none)"


def test_a_replay_judges_its_sessions_on_a_broker_and_server_it_did_not_start(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "replay"
    report_file = tmp_path / "report.json"
    replay_log = tmp_path / "replay.log"
    devices = [d.id for d in load_scenario(SCENARIO).devices]
    with MosquittoBroker(tmp_path / "broker") as broker:
        server = ServerProcess(
            tmp_path / "server",
            broker,
            run_module="simulators.sim_server",
            extra_env={CLOCK_ENV: str(workdir / "clock.json")},
        )
        token = server.api_token()  # classcam-server token create (it migrates the database)
        with server.log_file.open("ab") as log:
            server.process = subprocess.Popen(
                [sys.executable, "-m", "simulators.sim_server", "run"],
                env=server.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            # Up and waiting for the clock of a replay not yet started, as the operator sees it.
            assert wait_until(lambda: "waiting for the replay's clock" in server.tail_log(), 60)
            with replay_log.open("wb") as out:
                replay = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "simulators.cli",
                        "replay",
                        str(SCENARIO),
                        "--broker",
                        f"mqtt://{broker.host}:{broker.port}",
                        "--server",
                        server.api_url.removesuffix("/api/v1"),
                        "--token",
                        token,
                        "--report",
                        str(report_file),
                        "--workdir",
                        str(workdir),
                        "--timeout",
                        str(REPLAY_TIMEOUT_S),
                    ],
                    # The shell of an operator who reaches the server's database (the replay
                    # imports the scenario's setup with classcam-server import).
                    env=server.env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                while replay.poll() is None:
                    add_new_accounts(broker, workdir / "broker-accounts.json")
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        replay.wait(timeout=0.5)
            finally:
                stop_process(replay, timeout=30)
            server_alive = server.process.poll() is None
        finally:
            server.stop()

    explain = (
        f"replay output:\n{_tail(replay_log)}\nserver log:\n{_tail(server.log_file)}\n"
        f"agent log:\n{_tail(workdir / 'devices' / devices[0] / 'agent.log')}"
    )
    assert replay.returncode == 0, explain
    report = json.loads(report_file.read_text())
    sessions = {s["session_id"]: s for s in report["sessions"]}
    assert not report["timed_out"], explain
    assert report["matched"] == len(sessions) == 2, json.dumps(report, indent=1)
    assert all(s["match"] for s in sessions.values()), json.dumps(report, indent=1)

    # The replay started neither a broker nor a server of its own: its devices logged in to
    # ours with the accounts it handed over, and our server (still running when it ended)
    # judged them on the replay's clock.
    assert not (workdir / "server").exists() and not (workdir / "broker").exists()
    assert set(json.loads((workdir / "broker-accounts.json").read_text())) == set(devices)
    assert server_alive, explain
    server_log = server.log_file.read_text(errors="replace")
    # It read the replay's clock as soon as the replay made it, near the scenario's start.
    served_from = re.search(r"simulated clock \S+: (\S+) at", server_log)
    assert served_from is not None, explain
    read_at = datetime.fromisoformat(served_from.group(1))
    replay_start = datetime.fromisoformat(report["simulated"]["start"])
    assert timedelta(0) <= read_at - replay_start < timedelta(minutes=2), (read_at, replay_start)
    with contextlib.closing(sqlite3.connect(server.data_dir / "classcam.db")) as db:
        verdicts = dict(db.execute("SELECT id, verdict FROM class_sessions"))
        clips = db.execute("SELECT count(*) FROM clips WHERE session_id = 'r-honest'").fetchone()
        photos = db.execute("SELECT count(*) FROM photos").fetchone()
    assert verdicts == {"r-honest": "verified", "r-photo-elsewhere": "rejected"}, explain
    # Proven as the server proves a class: every window's clip, both photos of each session.
    assert (clips[0], photos[0]) == (WINDOWS, 4) == (sessions["r-honest"]["clips"], 4)
