"""SIGKILL the agent (``classcam-agent run``, a real process) at random points while it records,
cuts and uploads; restart it; every window asked for is stored once with the agent's hash, every
event is applied once, and the agent's SQLite files and the server's stay sound.

Each seed picks a moment from an observable list: while recording (a window behind it, its cut
not asked yet), while cutting (a random delay after the cut command), while uploading (a random
delay after the clip's first chunk reached the broker). Four devices run side by side.
"""

from __future__ import annotations

import threading
import time

import pytest
from fault_checks import invariant_problems, settle
from fault_ledger import LEDGER, Fault
from fault_stack import KILL_DEVICES, Driver, FaultStack, seeded

pytestmark = pytest.mark.faults

KILLS = 6  # per device: 24 seeds in all
BASE_SEED = 8_000
PHASES = ("recording", "cutting", "uploading")


class KillRun:
    """One device's seeds, run on a thread of its own."""

    def __init__(self, stack: FaultStack, name: str, seeds: list[int]) -> None:
        self.agent = stack.agent(name)
        self.driver = Driver(stack, self.agent)
        self.seeds = seeds
        self.faults: list[Fault] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test, with the seeds
            self.error = exc

    def _kill_and_restart(self, kind: str, seed: int, detail: str) -> None:
        self.faults.append(LEDGER.inject(kind, seed, f"{self.agent.device_id} {detail}"))
        self.agent.kill()
        self.agent.start()

    def _run(self) -> None:
        driver = self.driver
        self.agent.start()
        # The recording stays on the device until this many cuts are acknowledged.
        driver.open_session(windows=len(self.seeds))
        for seed in self.seeds:
            rng = seeded(seed)
            phase = rng.choice(PHASES)
            # A window in segments finished since the agent (re)started: on disk, fsynced.
            window = driver.recorded_window(1.5)
            if phase == "recording":
                delay = rng.uniform(0.0, 1.5)
                time.sleep(delay)
                self._kill_and_restart("agent_sigkill_recording", seed, f"+{delay:.2f}s")
                # Asked only now: the footage recorded before the kill must have survived.
                driver.cut(*window)
            elif phase == "cutting":
                delay = rng.uniform(0.0, 1.0)
                driver.cut(*window)
                time.sleep(delay)
                self._kill_and_restart("agent_sigkill_cutting", seed, f"+{delay:.2f}s after cut")
            else:
                cmd = driver.cut(*window)
                driver.stack.wiretap.wait_for(
                    lambda cmd=cmd: driver.first_chunk_seen(cmd), 30, "the first chunk"
                )
                delay = rng.uniform(0.0, 1.2)
                time.sleep(delay)
                self._kill_and_restart(
                    "agent_sigkill_uploading", seed, f"+{delay:.2f}s after the first chunk"
                )
        driver.close_session()


@pytest.mark.timeout(240)
def test_agent_killed_while_recording_cutting_uploading(stack: FaultStack) -> None:
    runs = [
        KillRun(stack, name, [BASE_SEED + i * KILLS + k for k in range(KILLS)])
        for i, name in enumerate(KILL_DEVICES)
    ]
    threads = [threading.Thread(target=r.run, name=r.agent.device_id) for r in runs]
    expectations = [r.driver.expectation for r in runs]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(200)
        for run in runs:
            assert run.error is None, (
                f"{run.agent.device_id} (seeds {run.seeds}): {run.error!r}\n{run.agent.tail_log()}"
            )
        problems = settle(stack, expectations, timeout=60)
    finally:
        for run in runs:
            run.agent.stop()
    # After a clean stop too, everything holds and the agent's files are sound.
    problems = problems or invariant_problems(stack, expectations)
    seeds = [s for r in runs for s in r.seeds]
    assert not problems, f"seeds {seeds}:\n" + "\n".join(problems)
    for run in runs:
        LEDGER.survived(run.faults)
    assert sum(len(r.faults) for r in runs) >= 20
