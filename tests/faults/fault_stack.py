"""The fault suite's shared parts: a stack of real processes (Mosquitto, ``classcam-server run``,
``classcam-agent run`` devices with a synthetic camera), a wiretap on the broker, the ledger of
injected faults, and the invariants checked after each scenario.

Invariants (issue 8, item 8):
- every requested window is stored exactly once, with the sha256 of the agent's manifest (the
  clip row, the evidence file and the agent's outbox agree);
- every event applied exactly once: ``device_events`` unique per ``event_id``, none missing of
  those the agent let go of (seen at the broker), every command answered;
- nothing the agent was told was durable is lost (an upload the agent marked ``complete`` is a
  clip; its event queue drains);
- ``PRAGMA integrity_check`` is ``ok`` on the server's database and the agent's SQLite files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common.clock import utc_now
from common.commands import Command, CommandType
from edge_agent.clips import upload_id_for
from edge_agent.config import AgentConfig, load_config
from simulators.harness import Device, ServerProcess, provision_device
from simulators.netlink import ShapedLink
from simulators.wiretap import Wiretap, WiretapBroker

SMALL_CAMERA = {"width": 320, "height": 240, "fps": 10.0}
FAST_RECORDING = {"segment_seconds": 1.0, "keyframe_interval_s": 1.0, "bitrate": 300_000}
# Small chunks and a paced uplink: a 2 s clip (~100 KB) takes a second or two to send, long
# enough to be interrupted at a random point.
PACED_UPLOAD = {
    "chunk_size": 16384,
    "rate_limit_bytes_per_s": 96 * 1024,
    "window": 4,
    "ack_timeout_s": 3.0,
    "retry_min_s": 1.0,
    "retry_max_s": 4.0,
}
QUICK_RECONNECT = {"reconnect_min_s": 1.0, "reconnect_max_s": 2.0}


# -- the ledger -------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    seed: int
    detail: str
    survived: bool = False


@dataclass
class FaultLedger:
    """Every fault injected in this run, and whether the invariants held after it."""

    faults: list[Fault] = field(default_factory=list)
    # What the invariants were checked on, by key: windows (device, cmd or upload id) and
    # events (event id); a key once bad stays bad.
    windows: dict[str, bool] = field(default_factory=dict)
    events: dict[str, str] = field(default_factory=dict)  # "ok", "lost" or "duplicated"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def checked_window(self, key: str, ok: bool) -> None:
        with self._lock:
            self.windows[key] = self.windows.get(key, True) and ok

    def checked_event(self, event_id: str, verdict: str) -> None:
        with self._lock:
            if self.events.get(event_id, "ok") == "ok":
                self.events[event_id] = verdict

    def inject(self, kind: str, seed: int, detail: str = "") -> Fault:
        fault = Fault(kind, seed, detail)
        with self._lock:
            self.faults.append(fault)
        return fault

    def survived(self, faults: Iterable[Fault]) -> None:
        for fault in faults:
            fault.survived = True

    def summary_lines(self) -> list[str]:
        by_kind: dict[str, list[Fault]] = {}
        for fault in self.faults:
            by_kind.setdefault(fault.kind, []).append(fault)
        total = len(self.faults)
        ok = sum(f.survived for f in self.faults)
        lines = [f"faults injected: {total}, survived: {ok}, not survived: {total - ok}"]
        verdicts = Counter(self.events.values())
        good = sum(self.windows.values())
        lines.append(
            f"windows checked: {len(self.windows)}, stored once with the agent's sha256: {good};"
            f" events checked: {len(self.events)}, lost: {verdicts['lost']},"
            f" duplicated: {verdicts['duplicated']}"
        )
        for kind, faults in sorted(by_kind.items()):
            good = sum(f.survived for f in faults)
            lines.append(f"  {kind:<28} {len(faults):>4} injected, {good:>4} survived")
        lost = [f for f in self.faults if not f.survived]
        for fault in lost[:20]:
            lines.append(f"  NOT SURVIVED: {fault.kind} seed={fault.seed} {fault.detail}")
        return lines


LEDGER = FaultLedger()


# -- waiting ----------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until truthy; ``AssertionError`` naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# -- the stack --------------------------------------------------------------------------------


def device_settings(extra: dict[str, dict[str, object]] | None = None) -> dict[str, Any]:
    settings: dict[str, dict[str, object]] = {
        "camera": dict(SMALL_CAMERA),
        "recording": dict(FAST_RECORDING),
        "upload": dict(PACED_UPLOAD),
        "broker": dict(QUICK_RECONNECT),
        "heartbeat": {"interval_s": 30.0},
        "storage": {"low_water_mb": 0, "critical_mb": 0},
    }
    for section, values in (extra or {}).items():
        settings.setdefault(section, {}).update(values)
    return settings


class AgentProcess:
    """``classcam-agent run`` for one device, started, SIGKILLed and restarted by the test."""

    def __init__(self, device: Device, wiretap: Wiretap) -> None:
        self.device = device
        self.config: AgentConfig = load_config(device.config_path)
        self.wiretap = wiretap
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = utc_now()
        self.kills = 0

    @property
    def device_id(self) -> str:
        return self.device.device_id

    def start(self, timeout: float = 30.0) -> None:
        """Spawn the agent; return once the broker has its ``online``."""
        since = time.monotonic()
        self.started_at = utc_now()
        self.process = self.device.spawn("run")
        try:
            self.wiretap.wait_for(
                lambda: self.wiretap.online_since(self.device_id, since),
                timeout,
                f"{self.device_id} online",
            )
        except TimeoutError:
            raise AssertionError(f"agent did not come online:\n{self.tail_log()}") from None

    def kill(self) -> None:
        """SIGKILL: a power cut, as far as the agent can tell."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.kills += 1
        self.process = None

    def stop(self) -> None:
        """SIGTERM and wait: a clean stop."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def tail_log(self, chars: int = 3000) -> str:
        path = self.device.root / "agent.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class FaultStack:
    """One broker (with a wiretap), one server process and the devices of every scenario,
    set up once for the suite; ``linked`` devices dial the broker through a shaped link."""

    def __init__(
        self,
        root: Path,
        device_names: list[str],
        linked: tuple[str, ...] = (),
        settings: dict[str, dict[str, object]] | None = None,
    ) -> None:
        self.root = root
        self.broker = WiretapBroker(root / "broker")
        self.link = ShapedLink(self.broker.host, self.broker.port).start()
        self.server = ServerProcess(root / "server", self.broker)
        # Accounts added before the broker starts are written once, not once per device.
        with ThreadPoolExecutor(4) as pool:
            migrated = pool.submit(self.server.cli, "migrate")
            made = [
                pool.submit(self._provision, name, settings, name in linked)
                for name in device_names
            ]
            self.devices = {f.result().device_id: f.result() for f in made}
            migrated.result()
        self.broker.start()
        self._register(list(self.devices.values()))
        self.server.start()
        self.wiretap = Wiretap(self.broker)

    def _provision(
        self, name: str, settings: dict[str, dict[str, object]] | None, linked: bool
    ) -> Device:
        device = provision_device(
            self.root / "devices", name, self.broker, settings=device_settings(settings)
        )
        if linked:
            text = device.config_path.read_text()
            text = text.replace(f"port = {self.broker.port}", f"port = {self.link.port}")
            device.config_path.write_text(text)
        return device

    def _register(self, devices: list[Device]) -> None:
        """All devices in one ``classcam-server import`` (one process start, not one each)."""
        setup = {
            "institutions": [{"id": "fault-school", "name": "fault school"}],
            "classrooms": [
                {
                    "id": f"room-{d.device_id}",
                    "institution_id": "fault-school",
                    "name": d.device_id,
                    "lat": 30.0,
                    "lon": 120.0,
                }
                for d in devices
            ],
            "devices": [
                {
                    "device_id": d.device_id,
                    "classroom_id": f"room-{d.device_id}",
                    "public_key": d.public_key,
                }
                for d in devices
            ],
        }
        path = self.root / "setup.json"
        path.write_text(json.dumps(setup))
        self.server.cli("import", str(path))

    def agent(self, name: str) -> AgentProcess:
        return AgentProcess(self.devices[name], self.wiretap)

    def close(self) -> None:
        self.wiretap.close()
        self.link.stop()
        self.server.stop()
        self.broker.stop()

    # -- what the server holds --------------------------------------------------------------

    def db(self) -> contextlib.closing[sqlite3.Connection]:
        return read_only(Path(self.server.db_url.removeprefix("sqlite:///")))

    def restart_server(self) -> None:
        self.server.kill()
        self.server.start()


def read_only(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A read-only connection to an SQLite file another process writes, closed after use."""
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10))


def integrity_problems(paths: Iterable[Path]) -> list[str]:
    """``PRAGMA integrity_check`` of each SQLite file that exists; what is not ``ok``."""
    problems = []
    for path in paths:
        if not path.exists():
            continue
        with read_only(path) as db:
            result = [r[0] for r in db.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            problems.append(f"{path}: {result[:5]}")
    return problems


def agent_db_paths(config: AgentConfig) -> list[Path]:
    return [
        config.state_dir / "agent.sqlite3",
        config.outbox_dir / "outbox.sqlite3",
        config.spool_dir / "index.sqlite3",
    ]


# -- the invariants ---------------------------------------------------------------------------


@dataclass
class Expectation:
    """What one device was asked for in a scenario: its commands, and which of them cut."""

    device_id: str
    config: AgentConfig
    commands: list[Command] = field(default_factory=list)

    @property
    def cuts(self) -> list[Command]:
        return [c for c in self.commands if c.type == CommandType.CUT]


def _outbox_rows(config: AgentConfig) -> dict[str, tuple[str, str]]:
    """upload id -> (state, sha256) as the agent's outbox has it."""
    path = config.outbox_dir / "outbox.sqlite3"
    if not path.exists():
        return {}
    with read_only(path) as db:
        return {
            r[0]: (r[1], r[2]) for r in db.execute("SELECT upload_id, state, sha256 FROM outbox")
        }


def _pending_events(config: AgentConfig) -> int:
    path = config.state_dir / "agent.sqlite3"
    if not path.exists():
        return 0
    with read_only(path) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def invariant_problems(
    stack: FaultStack, expectations: list[Expectation], *, deep: bool = True
) -> list[str]:
    """Every broken invariant, named; empty when all hold. ``deep`` also hashes the evidence
    files and runs ``PRAGMA integrity_check`` (too slow to poll)."""
    problems: list[str] = []
    with stack.db() as db:
        for exp in expectations:
            outbox = _outbox_rows(exp.config)
            for cmd in exp.cuts:
                upload_id = upload_id_for(exp.device_id, cmd.cmd_id)
                rows = db.execute(
                    "SELECT upload_id, sha256, path FROM clips WHERE device_id = ? AND cmd_id = ?",
                    (exp.device_id, cmd.cmd_id),
                ).fetchall()
                state, agent_sha = outbox.get(upload_id, (None, None))
                before = len(problems)
                if len(rows) > 1:
                    problems.append(f"{cmd.cmd_id}: stored {len(rows)} times")
                if not rows:
                    problems.append(f"{cmd.cmd_id}: no clip (agent outbox: {state})")
                    if deep:
                        LEDGER.checked_window(f"{exp.device_id}/{cmd.cmd_id}", False)
                    continue
                stored_id, sha, rel = rows[0]
                if stored_id != upload_id:
                    problems.append(f"{cmd.cmd_id}: stored as {stored_id}, cut as {upload_id}")
                if agent_sha != sha:
                    problems.append(f"{cmd.cmd_id}: server sha {sha} != agent {agent_sha}")
                file = stack.server.evidence_dir / rel
                if not deep:
                    continue
                if not file.exists():
                    problems.append(f"{cmd.cmd_id}: evidence file {rel} missing")
                elif hashlib.sha256(file.read_bytes()).hexdigest() != sha:
                    problems.append(f"{cmd.cmd_id}: evidence file does not hash to {sha}")
                LEDGER.checked_window(f"{exp.device_id}/{cmd.cmd_id}", len(problems) == before)
            # Nothing the agent was told was durable is lost.
            for upload_id, (state, sha) in outbox.items():
                if state != "complete":
                    problems.append(f"{exp.device_id}: upload {upload_id} still {state}")
                    continue
                row = db.execute(
                    "SELECT sha256 FROM clips WHERE device_id = ? AND upload_id = ?",
                    (exp.device_id, upload_id),
                ).fetchone()
                if row is None or row[0] != sha:
                    problems.append(f"{upload_id}: acked complete to the agent, not stored")
            # Events: once each, none lost, every command answered.
            stored = Counter(
                r[0]
                for r in db.execute(
                    "SELECT event_id FROM device_events WHERE device_id = ?", (exp.device_id,)
                )
            )
            dup = [e for e, n in stored.items() if n > 1]
            if dup:
                problems.append(f"{exp.device_id}: events stored twice: {dup[:5]}")
            lost = [
                f"{e.type.value}/{e.cmd_id}"
                for e in stack.wiretap.events_of(exp.device_id)
                if e.event_id not in stored
            ]
            if lost:
                problems.append(
                    f"{exp.device_id}: {len(lost)} event(s) the broker had are not "
                    f"in device_events: {lost[:8]}"
                )
            if deep:
                for event in stack.wiretap.events_of(exp.device_id):
                    n = stored.get(event.event_id, 0)
                    verdict = "ok" if n == 1 else ("lost" if n == 0 else "duplicated")
                    LEDGER.checked_event(event.event_id, verdict)
            answered = {
                r[0]
                for r in db.execute(
                    "SELECT DISTINCT cmd_id FROM device_events WHERE device_id = ?",
                    (exp.device_id,),
                )
            }
            unanswered = [c.cmd_id for c in exp.commands if c.cmd_id not in answered]
            if unanswered:
                problems.append(f"{exp.device_id}: commands without an answer: {unanswered}")
            pending = _pending_events(exp.config)
            if pending:
                problems.append(f"{exp.device_id}: {pending} event(s) never delivered")
    if not deep:
        return problems
    problems += integrity_problems([Path(stack.server.db_url.removeprefix("sqlite:///"))])
    for exp in expectations:
        problems += integrity_problems(agent_db_paths(exp.config))
    return problems


def settle(
    stack: FaultStack,
    expectations: list[Expectation],
    timeout: float,
    resend: Callable[[], None] | None = None,
) -> list[str]:
    """Wait until every invariant holds (or ``timeout``); return what still does not."""
    deadline = time.monotonic() + timeout
    last_resend = time.monotonic()
    while True:
        problems = invariant_problems(stack, expectations, deep=False)
        if not problems:
            return invariant_problems(stack, expectations)
        if time.monotonic() > deadline:
            return problems
        if resend is not None and time.monotonic() - last_resend > 4:
            resend()
            last_resend = time.monotonic()
        time.sleep(0.3)


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


# -- the devices of each scenario, provisioned once for the suite -------------------------------

KILL_DEVICES = tuple(f"cam-kill-{i}" for i in range(4))
# Later scenarios reuse devices that earlier ones killed (each provisioning costs a process
# start and a broker password hash): their outbox and events are checked all over again.
SERVER_DEVICES = KILL_DEVICES[:2]
BROKER_DEVICE = KILL_DEVICES[2]
LINK_DEVICE = "cam-link-0"
MESSAGE_DEVICE = "cam-msg-0"
ALL_DEVICES = (*KILL_DEVICES, LINK_DEVICE, MESSAGE_DEVICE)
LINKED_DEVICES = (LINK_DEVICE,)


class Driver:
    """Sends one device its commands through the wiretap and remembers them as expected."""

    def __init__(self, stack: FaultStack, agent: AgentProcess) -> None:
        self.stack = stack
        self.agent = agent
        self.device_id = agent.device_id
        self.expectation = Expectation(agent.device_id, agent.config)
        self.session_id = f"s-{agent.device_id}-{uuid.uuid4().hex[:6]}"
        self._last_resend = time.monotonic()

    def send(self, type_: CommandType, **fields: Any) -> Command:
        cmd = self.stack.wiretap.command(self.device_id, type_, **fields)
        self.expectation.commands.append(cmd)
        self.stack.wiretap.send(self.device_id, cmd)
        return cmd

    def resend_unanswered(self, every_s: float = 3.0) -> None:
        """What the server's scheduler does for a command a crashed broker lost: ask again,
        same ``cmd_id`` (the agent answers a repeat with its first answer), at most every
        ``every_s``."""
        if time.monotonic() - self._last_resend < every_s:
            return
        self._last_resend = time.monotonic()
        for cmd in self.expectation.commands:
            if not self.stack.wiretap.replies(cmd.cmd_id):
                self.stack.wiretap.send(self.device_id, cmd)

    def answer(self, cmd: Command, timeout: float = 30.0) -> Any:
        """Wait for the agent's answer to ``cmd``, asking again while none comes (a broker
        that crashed may have lost it, as the server's scheduler knows)."""

        def answered() -> Any:
            replies = self.stack.wiretap.replies(cmd.cmd_id)
            if not replies:
                self.resend_unanswered()
            return replies

        return wait_until(answered, timeout, f"answer to {cmd.cmd_id}")

    def open_session(self, windows: int) -> None:
        cmd = self.send(CommandType.OPEN_SESSION, session_id=self.session_id, windows=windows)
        self.answer(cmd)

    def close_session(self) -> None:
        self.answer(self.send(CommandType.CLOSE_SESSION, session_id=self.session_id))

    def cut_behind(self, length_s: float = 2.0) -> Command:
        """Ask for the newest ``length_s`` the agent has recorded since it last started."""
        return self.cut(*self.recorded_window(length_s))

    def recorded_window(self, length_s: float, timeout: float = 30.0) -> tuple[datetime, datetime]:
        """The newest window of ``length_s`` held in finished segments of the agent's spool
        since it last started; waits for that much footage (a loaded box starts slowly)."""
        index = self.agent.config.spool_dir / "index.sqlite3"
        since_us = round(self.agent.started_at.timestamp() * 1_000_000)

        def span() -> tuple[int, int] | None:
            if not index.exists():
                return None
            with read_only(index) as db:
                first, last = db.execute(
                    "SELECT min(start_wall_us), max(end_wall_us) FROM segments"
                    " WHERE start_wall_us >= ?",
                    (since_us,),
                ).fetchone()
            if first is None or (last - first) / 1e6 < length_s + 0.2:
                return None
            return first, last

        _, last = wait_until(span, timeout, f"{length_s} s recorded by {self.device_id}")
        end = datetime.fromtimestamp(last / 1e6, UTC) - timedelta(seconds=0.1)
        return end - timedelta(seconds=length_s), end

    def cut(self, start: datetime, end: datetime) -> Command:
        n = len(self.expectation.commands)
        return self.send(
            CommandType.CUT,
            cmd_id=f"cut-{self.session_id.removeprefix('s-')}-{n}",  # unique per run
            session_id=self.session_id,
            start=start,
            end=end,
        )

    def first_chunk_seen(self, cmd: Command) -> bool:
        key = (self.device_id, upload_id_for(self.device_id, cmd.cmd_id))
        return bool(self.stack.wiretap.seen.chunks[key])
