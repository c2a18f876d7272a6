"""The fault suite: one stack for every scenario, and the ledger's count printed at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fault_ledger import LEDGER
from fault_stack import ALL_DEVICES, LINKED_DEVICES, FaultStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """Mosquitto with a wiretap, ``classcam-server run`` and every scenario's devices: set up
    once (about 15 s of process starts), each scenario leaves them running."""
    stack = FaultStack(tmp_path_factory.mktemp("faults"), list(ALL_DEVICES), LINKED_DEVICES)
    yield stack
    stack.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in item.nodeid and item.get_closest_marker("faults") is None:
            raise pytest.UsageError(f"{item.nodeid} is in the fault suite but not marked faults")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not LEDGER.faults:
        return
    terminalreporter.section("fault injection")
    for line in LEDGER.summary_lines():
        terminalreporter.write_line(line)
