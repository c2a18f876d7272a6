"""Fixtures for agent service tests: the real server and an operator console on a real broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_harness import Operator

from simulators.broker import MosquittoBroker
from simulators.harness import ServerProcess


@pytest.fixture
def server(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "server", mosquitto)
    proc.cli("migrate")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def operator(mosquitto: MosquittoBroker) -> Iterator[Operator]:
    op = Operator(mosquitto)
    yield op
    op.close()
