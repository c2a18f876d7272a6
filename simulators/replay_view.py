"""What a replay shows people: a live view while it runs, a table per session at the end
(expected vs actual verdict and reasons, ✓/✗), and the JSON report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from simulators.replay_timeline import SessionOutcome

MAX_ROWS = 24  # a fleet of 100 is summarised below this many rows


@dataclass(frozen=True, slots=True)
class SessionLine:
    session_id: str
    device_id: str
    behaviours: tuple[str, ...]
    state: str  # scheduled / open / closed, as the server says
    windows_asked: int
    windows_total: int
    clips: int
    photos: int
    verdict: str
    settled: bool


@dataclass(frozen=True, slots=True)
class DeviceLine:
    device_id: str
    link: str  # up / down
    shape: str
    power: str  # on / off / forged
    sent_kb: float


@dataclass(frozen=True, slots=True)
class LiveStatus:
    now: datetime
    speed: float
    mode: str
    wall_s: float
    jumps: int
    sessions: tuple[SessionLine, ...] = ()
    devices: tuple[DeviceLine, ...] = ()


def live_table(status: LiveStatus) -> Group:
    """The live view: the simulated clock, then sessions, then devices."""
    head = Text.assemble(
        ("simulated ", "dim"),
        (f"{status.now:%Y-%m-%d %H:%M:%S} UTC", "bold"),
        (f"  ×{status.speed:g}", "cyan"),
        (f"  {status.mode}", "magenta"),
        (f"  {status.wall_s:.0f} s real, {status.jumps} jump(s)", "dim"),
    )
    sessions = Table(box=None, pad_edge=False)
    for column in ("session", "behaviours", "state", "windows", "clips", "photos", "verdict"):
        sessions.add_column(column, no_wrap=column != "behaviours")
    # Sessions still in play first: a long day's settled ones scroll away.
    for line in sorted(status.sessions, key=lambda s: s.settled)[:MAX_ROWS]:
        verdict = Text(line.verdict, style="bold" if line.settled else "dim")
        sessions.add_row(
            line.session_id,
            ", ".join(line.behaviours) or "honest",
            line.state,
            f"{line.windows_asked}/{line.windows_total}",
            str(line.clips),
            str(line.photos),
            verdict,
        )
    rows: list[Any] = [head, sessions]
    if len(status.sessions) > MAX_ROWS:
        settled = sum(1 for s in status.sessions if s.settled)
        rows.append(Text(f"… {len(status.sessions) - MAX_ROWS} more; {settled} settled in all"))
    devices = Table(box=None, pad_edge=False)
    for column in ("device", "link", "shape", "power", "sent"):
        devices.add_column(column, no_wrap=True)
    for d in status.devices[:MAX_ROWS]:
        link = Text(d.link, style="green" if d.link == "up" else "red")
        devices.add_row(d.device_id, link, d.shape, d.power, f"{d.sent_kb:,.0f} kB")
    rows.append(devices)
    if len(status.devices) > MAX_ROWS:
        down = sum(1 for d in status.devices if d.link != "up" or d.power == "off")
        rows.append(Text(f"… {len(status.devices) - MAX_ROWS} more; {down} down or off in all"))
    return Group(*rows)


class LiveView:
    """A rich Live display on a terminal; nothing elsewhere (logs and CI get the table)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live: Live | None = None

    @contextmanager
    def running(self) -> Iterator[LiveView]:
        if not self.console.is_terminal:
            yield self
            return
        with Live(console=self.console, refresh_per_second=4, transient=False) as live:
            self._live = live
            try:
                yield self
            finally:
                self._live = None

    def update(self, status: LiveStatus) -> None:
        if self._live is not None:
            self._live.update(live_table(status))


def _reasons(codes: frozenset[str]) -> str:
    return ", ".join(sorted(codes)) or "—"


def outcome_table(name: str, outcomes: list[SessionOutcome]) -> Table:
    """One row per session: expected and actual verdict and reasons, ✓ or ✗; under the actual
    reasons, what failed in the replay itself (a refused photo upload, an agent that died)."""
    matched = sum(1 for o in outcomes if o.match)
    table = Table(title=f"{name}: {matched}/{len(outcomes)} as expected")
    table.add_column("", no_wrap=True)
    table.add_column("session", no_wrap=True)
    table.add_column("behaviours")
    table.add_column("expected")
    table.add_column("actual")
    for o in outcomes:
        expected = o.session.expected
        table.add_row(
            Text("✓", style="green") if o.match else Text("✗", style="bold red"),
            o.session.session_id,
            ", ".join(o.session.behaviours) or "honest",
            f"{expected.verdict}\n{_reasons(expected.reasons)}"
            + (f"\n(may also: {_reasons(expected.may_also)})" if expected.may_also else ""),
            Text(
                "\n".join([o.verdict, _reasons(o.reasons), *o.failures]),
                style="" if o.match else "red",
            ),
        )
    return table


@dataclass
class ReplayReport:
    """The JSON report of one replay (``--report FILE``)."""

    scenario: str
    speed: float
    wall_s: float
    timed_out: bool
    clock_start: datetime
    clock_end: datetime
    outcomes: list[SessionOutcome]
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    jumps: list[tuple[datetime, datetime]] = field(default_factory=list)
    photos: dict[str, int] = field(default_factory=dict)  # "session/kind" -> HTTP status

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "speed": self.speed,
            "wall_s": round(self.wall_s, 1),
            "timed_out": self.timed_out,
            "simulated": {"start": self.clock_start.isoformat(), "end": self.clock_end.isoformat()},
            "matched": sum(1 for o in self.outcomes if o.match),
            "sessions": [o.to_json() for o in self.outcomes],
            "devices": self.devices,
            "photo_uploads": self.photos,
            "jumps": [{"from": a.isoformat(), "to": b.isoformat()} for a, b in self.jumps],
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n")
