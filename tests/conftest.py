"""Shared fixtures: real brokers started per test from firmware_config/, temp state dirs.

Also sorts out the database-facing suite: every test that takes a database fixture of
tests/ingest_server/conftest.py is marked ``db``, so that ``pytest -m db`` runs it; with
``CLASSCAM_TEST_DATABASE=postgresql`` those fixtures hand out PostgreSQL databases, the tests
marked ``sqlite_only`` are skipped with their reason, and the tests that run on both engines by
themselves (``pg_url``, ``pg_harness``, or a "postgresql" parameter) are deselected, since the
SQLite run already ran them on both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_budget import load_hypothesis_profile

from simulators.broker import BrokerAccounts, EmbeddedBroker, MosquittoBroker

load_hypothesis_profile()

# The fixtures that hand a test a database (tests/ingest_server/conftest.py).
DATABASE_FIXTURES = frozenset({"sqlite_url", "sqlite_template", "harness", "pg_url", "pg_harness"})
POSTGRESQL_FIXTURES = frozenset({"pg_url", "pg_harness"})


def _runs_on_postgresql_itself(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(fixtures & POSTGRESQL_FIXTURES) or "postgresql" in params


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    on_postgresql = os.environ.get("CLASSCAM_TEST_DATABASE", "sqlite") == "postgresql"
    # A test parametrised over both engines asks for its database by name at run time
    # (getfixturevalue), so its SQLite instance is known by its PostgreSQL twin.
    both = {item.nodeid.split("[")[0] for item in items if _runs_on_postgresql_itself(item)}
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        both_engines = item.nodeid.split("[")[0] in both
        if both_engines or DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
        if on_postgresql and both_engines:
            deselected.append(item)
            continue
        sqlite_only = item.get_closest_marker("sqlite_only")
        if on_postgresql and sqlite_only is not None:
            reason = sqlite_only.kwargs.get("reason") or (sqlite_only.args or ("",))[0]
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


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
