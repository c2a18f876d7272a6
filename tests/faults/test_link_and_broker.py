"""The network and the broker fail under a running agent (``classcam-agent run``): its link cut
by the fault-injecting proxy (``simulators.netlink.ShapedLink``) mid-upload and mid-event, and
the broker killed with SIGKILL and restarted mid-upload. Afterwards every window is stored once
with the agent's hash, every event applied once, nothing acknowledged lost."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fault_checks import invariant_problems, settle, wait_until
from fault_ledger import LEDGER, Fault
from fault_stack import BROKER_DEVICE, LINK_DEVICE, Driver, FaultStack, seeded

from common.commands import CommandType

pytestmark = pytest.mark.faults

LINK_CUTS = 10
BROKER_KILLS = 5


def _running(stack: FaultStack, name: str, windows: int) -> Iterator[Driver]:
    driver = Driver(stack, stack.agent(name))
    driver.agent.start()
    driver.open_session(windows=windows)
    try:
        yield driver
    finally:
        driver.agent.stop()


@pytest.fixture
def linked(stack: FaultStack) -> Iterator[Driver]:
    yield from _running(stack, LINK_DEVICE, LINK_CUTS + 1)


@pytest.fixture
def direct(stack: FaultStack) -> Iterator[Driver]:
    yield from _running(stack, BROKER_DEVICE, BROKER_KILLS + 1)


def _finish(stack: FaultStack, driver: Driver, seeds: list[int], faults: list[Fault]) -> None:
    driver.close_session()
    expectations = [driver.expectation]
    problems = settle(stack, expectations, timeout=60, resend=driver.resend_unanswered)
    problems = problems or invariant_problems(stack, expectations)
    assert not problems, f"seeds {seeds}:\n" + "\n".join(problems) + "\n" + driver.agent.tail_log()
    LEDGER.survived(faults)


@pytest.mark.timeout(150)
def test_link_cut_mid_upload_and_mid_event(stack: FaultStack, linked: Driver) -> None:
    seeds = [7_200 + k for k in range(LINK_CUTS)]
    faults: list[Fault] = []
    for seed in seeds:
        rng = seeded(seed)
        if rng.random() < 0.6:
            cmd = linked.cut_behind()
            stack.wiretap.wait_for(lambda c=cmd: linked.first_chunk_seen(c), 30, "first chunk")
            kind, what = "link_cut_mid_upload", f"{cmd.cmd_id} chunk 1"
        else:
            first = linked.send(CommandType.CONFIG, settings={"heartbeat_interval_s": 40})
            for i in range(5):
                linked.send(CommandType.CONFIG, settings={"heartbeat_interval_s": 41 + i})
            stack.wiretap.wait_for(lambda c=first: stack.wiretap.replies(c.cmd_id), 20, "event")
            kind, what = "link_cut_mid_event", f"{first.cmd_id} answered"
        delay, outage = rng.uniform(0.0, 0.6), rng.uniform(0.2, 1.5)
        time.sleep(delay)
        faults.append(LEDGER.inject(kind, seed, f"+{delay:.2f}s after {what}, {outage:.2f}s down"))
        stack.link.cut()
        time.sleep(outage)  # the outage itself is the fault
        stack.link.restore()
    _finish(stack, linked, seeds, faults)


@pytest.mark.timeout(150)
def test_broker_killed_and_restarted_mid_upload(stack: FaultStack, direct: Driver) -> None:
    seeds = [7_300 + k for k in range(BROKER_KILLS)]
    faults: list[Fault] = []
    for seed in seeds:
        rng = seeded(seed)
        cmd = direct.cut_behind()
        # A command the crash lost is asked again, as the server's scheduler would.
        wait_until(
            lambda c=cmd: direct.first_chunk_seen(c) or direct.resend_unanswered(), 30, "chunk 1"
        )
        delay = rng.uniform(0.0, 0.8)
        time.sleep(delay)
        faults.append(
            LEDGER.inject("broker_sigkill_mid_upload", seed, f"+{delay:.2f}s after {cmd.cmd_id}")
        )
        stack.broker.kill()
        stack.broker.start()
    _finish(stack, direct, seeds, faults)
