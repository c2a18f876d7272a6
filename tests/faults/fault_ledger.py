"""The fault suite's ledger: every fault injected in a run, whether the invariants held after
it, and what they were checked on; ``conftest.py`` prints it at the end of the run."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field


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
