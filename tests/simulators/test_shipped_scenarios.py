"""The shipped scenarios, replayed as ``classcam-sim replay`` does on every ``make test``: a real
Mosquitto, the real server on the shared accelerated clock, one real agent process per camera
(shaped 4G link, fake modem), the lecturers' photos over HTTP, forgers for cameras in an
adversary's hands.

- ``demo-day.yaml`` (what ``make demo`` shows): four classrooms, two honest classes, a photo
  600 m away reported in GCJ-02, a covered lens;
- ``fraud-catalogue.yaml``: every behaviour of the schema in a class of its own, among them a
  camera whose 4G is down overnight, so the replay must jump the night to judge it.

Each file is replayed once (about two minutes each); every session is then its own test, so a
failure names the session, its expected and actual verdict, the server's view of it and the
tail of the server's and its camera's logs. Select them with ``pytest -m replay``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ingest_server.settings import Settings
from simulators.replay import ReplayResult, exit_status, load_plan, run_replay
from simulators.replay_timeline import SessionOutcome
from simulators.scenario_load import load_scenario

pytestmark = [pytest.mark.replay, pytest.mark.timeout(600)]

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
SHIPPED = ("demo-day", "fraud-catalogue")
WINDOWS = Settings.model_fields["windows_per_session"].default


@dataclass(frozen=True, slots=True)
class Replayed:
    """One replay of a shipped file: what ``run_replay`` returned, the JSON report it wrote,
    the text it printed and where its parts kept their logs."""

    result: ReplayResult
    report: dict[str, Any]
    printed: str
    workdir: Path

    def outcome(self, session_id: str) -> SessionOutcome:
        return next(o for o in self.result.outcomes if o.session.session_id == session_id)

    def explain(self, outcome: SessionOutcome) -> str:
        """Why a session did not end as expected, as far as the replay saw it."""
        session = outcome.session
        view = self.result.views.get(session.session_id, {})
        shown = {k: view.get(k) for k in ("state", "verdict", "windows", "photos")}
        return "\n".join(
            [
                f"{session.session_id} ({', '.join(session.behaviours)})",
                f"expected {session.expected.verdict} {sorted(session.expected.reasons)}"
                f" (may also {sorted(session.expected.may_also)})",
                f"actual   {outcome.verdict} {sorted(outcome.reasons)}",
                f"failed in the replay: {list(outcome.failures)}",
                "server's view: " + json.dumps(shown, ensure_ascii=False, indent=1)[:6000],
                "server log tail:\n" + _tail(self.workdir / "server" / "server.log"),
                f"{session.device_id} log tail:\n"
                + _tail(self.workdir / "devices" / session.device_id / "agent.log"),
            ]
        )


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path}: none)"


def _replay(name: str, tmp: Path) -> Replayed:
    console = Console(record=True, width=160)
    plan = load_plan(SCENARIOS / f"{name}.yaml", console)
    report_file = tmp / "report.json"
    result = run_replay(plan, workdir=tmp / "replay", report=report_file, console=console)
    return Replayed(result, json.loads(report_file.read_text()), console.export_text(), tmp)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Replayed]]:
    """Each shipped file replayed once, when a test first asks for it (a replay that failed
    fails every test of its file without being run again)."""
    done: dict[str, Replayed | BaseException] = {}

    def replay_of(name: str) -> Replayed:
        if name not in done:
            try:
                done[name] = _replay(name, tmp_path_factory.mktemp(name))
            except Exception as exc:  # kept: the file's other tests fail on it too
                done[name] = exc
        got = done[name]
        if isinstance(got, BaseException):
            raise got
        return got

    yield replay_of


def _sessions(name: str) -> list[Any]:
    return [
        pytest.param(name, s.id, id=f"{name}/{s.id}")
        for s in load_scenario(SCENARIOS / f"{name}.yaml").sessions
    ]


@pytest.mark.parametrize(("name", "session_id"), [p for n in SHIPPED for p in _sessions(n)])
def test_the_session_ends_as_the_scenario_expects(
    replayed: Callable[[str], Replayed], name: str, session_id: str
) -> None:
    replay = replayed(name)
    outcome = replay.outcome(session_id)
    assert outcome.match, replay.explain(outcome)
    if outcome.verdict == "verified":
        # Proven the way the server proves a class: every window's clip and both photos.
        assert (outcome.clips, outcome.photos) == (WINDOWS, 2), replay.explain(outcome)


@pytest.mark.parametrize("name", SHIPPED)
def test_the_replay_of_the_file_says_every_session_matched(
    replayed: Callable[[str], Replayed], name: str
) -> None:
    replay = replayed(name)
    report, sessions = replay.report, replay.report["sessions"]
    assert not report["timed_out"]
    scheduled = load_scenario(SCENARIOS / f"{name}.yaml").sessions
    assert report["matched"] == len(sessions) == len(scheduled)
    assert all(s["match"] for s in sessions)
    assert exit_status(replay.result) == 0  # what `classcam-sim replay` exits with
    assert f"{len(sessions)}/{len(sessions)} as expected" in replay.printed
    assert "✗" not in replay.printed
    # Every photo went over HTTP and was taken in; every device spoke through its link, and
    # every agent (a forger has none) asked its fake modem about the network.
    devices = report["devices"]
    assert report["photo_uploads"] and set(report["photo_uploads"].values()) == {201}
    assert all(d["bytes_up"] > 0 for d in devices.values()), devices
    assert not any(d["unexpected_agent_exits"] for d in devices.values()), devices
    assert all(d["modem_commands"] > 0 for d in devices.values() if "forged_uploads" not in d)


def test_a_camera_offline_overnight_is_judged_once_its_clips_arrive_next_morning(
    replayed: Callable[[str], Replayed],
) -> None:
    replay = replayed("fraud-catalogue")
    report = replay.report
    link_downs = {d: c["link_downs"] for d, c in report["devices"].items()}
    assert link_downs.pop("cam-110") == 1 and set(link_downs.values()) == {0}, link_downs
    # The night was jumped, not waited: the clock reached the link's return at 07:30.
    link_back = datetime.fromisoformat("2026-12-01T07:30:00+08:00")
    assert report["jumps"] and datetime.fromisoformat(report["simulated"]["end"]) > link_back
    outcome = replay.outcome("s-uplink-down")
    assert outcome.clips == WINDOWS, replay.explain(outcome)  # cut and uploaded after the night
