"""SIGKILL the server (``classcam-server run``, the ingest consumer in a real process) while it
ingests clips and while it applies events; restart it; nothing the agents were told was durable
is lost, every window is stored once with the agent's hash, every event applied once.

Kills alternate between mid-ingest (a seeded random delay after a clip's first chunk reached the
broker) and mid-event (a seeded random delay after the first answer of a burst of commands
reached the broker, while the rest are still coming).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_checks import integrity_problems, invariant_problems, settle
from fault_ledger import LEDGER, Fault
from fault_stack import SERVER_DEVICES, Driver, FaultStack, seeded

from common.commands import CommandType

pytestmark = pytest.mark.faults

KILLS = 6
BASE_SEED = 9_000
BURST = 12  # commands, so as many events, per mid-event kill


@pytest.fixture
def drivers(stack: FaultStack) -> Iterator[list[Driver]]:
    drivers = [Driver(stack, stack.agent(name)) for name in SERVER_DEVICES]
    for driver in drivers:
        driver.agent.start()
        driver.open_session(windows=KILLS + 1)
    yield drivers
    for driver in drivers:
        driver.agent.stop()


@pytest.mark.timeout(200)
def test_server_killed_mid_ingest_and_mid_event(stack: FaultStack, drivers: list[Driver]) -> None:
    faults: list[Fault] = []
    seeds = [BASE_SEED + k for k in range(KILLS)]
    server_db = Path(stack.server.db_url.removeprefix("sqlite:///"))
    for k, seed in enumerate(seeds):
        rng = seeded(seed)
        driver = drivers[k % len(drivers)]
        if k % 2 == 0:
            cmd = driver.cut_behind()
            stack.wiretap.wait_for(
                lambda d=driver, c=cmd: d.first_chunk_seen(c), 30, "the first chunk"
            )
            delay = rng.uniform(0.0, 1.0)
            kind, detail = (
                "server_sigkill_mid_ingest",
                f"+{delay:.2f}s after chunk 1 of {cmd.cmd_id}",
            )
        else:
            burst = [
                driver.send(CommandType.CONFIG, settings={"heartbeat_interval_s": 30 + i})
                for i in range(BURST)
            ]
            stack.wiretap.wait_for(
                lambda b=burst[0]: stack.wiretap.replies(b.cmd_id), 20, "the first answer"
            )
            delay = rng.uniform(0.0, 0.15)
            kind, detail = "server_sigkill_mid_event", f"+{delay:.2f}s after event 1 of {BURST}"
        time.sleep(delay)
        faults.append(LEDGER.inject(kind, seed, f"{driver.device_id} {detail}"))
        stack.server.kill()
        # A crash must leave the database sound before anything else touches it.
        assert not integrity_problems([server_db]), f"seed {seed}"
        stack.server.start()
    for driver in drivers:
        driver.close_session()
    expectations = [d.expectation for d in drivers]
    problems = settle(stack, expectations, timeout=60)
    problems = problems or invariant_problems(stack, expectations)
    assert not problems, f"seeds {seeds}:\n" + "\n".join(problems) + "\n" + stack.server.tail_log()
    LEDGER.survived(faults)
