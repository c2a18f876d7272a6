"""Shared fixtures: real brokers started per test from firmware_config/, temp state dirs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_budget import load_hypothesis_profile

from simulators.broker import BrokerAccounts, EmbeddedBroker, MosquittoBroker

load_hypothesis_profile()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto of our own on a free port, with classcam's config and ACL."""
    broker = MosquittoBroker(tmp_path / "broker", BrokerAccounts())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def embedded_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """amqtt, the MQTT 3.1.1 demo fallback."""
    broker = EmbeddedBroker(tmp_path / "amqtt", BrokerAccounts())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
