"""Fixtures for the ingest server: real SQLite / PostgreSQL databases, real stores, real keys.

``sqlite_url`` (and ``harness`` on it) is the database most tests run on: a migrated SQLite
file of the test's own, or, with ``CLASSCAM_TEST_DATABASE=postgresql``, a migrated PostgreSQL
database on the server at ``CLASSCAM_TEST_PG``, one per worker, put back as migrated before
each test (pg_worker.py); ``make test`` runs the database-facing suite (``-m db``) both ways.
``pg_url`` and ``pg_harness`` are PostgreSQL always, for the tests that run on both engines by
themselves.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import Harness
from pg_worker import WorkerDatabase
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from common.signing import generate_private_key
from ingest_server.db import make_engine, migrate

PG_BASE = os.environ.get("CLASSCAM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# The engine that ``sqlite_url`` and ``harness`` hand out: "sqlite" or "postgresql".
TEST_DATABASE = os.environ.get("CLASSCAM_TEST_DATABASE", "sqlite")
if TEST_DATABASE not in ("sqlite", "postgresql"):
    raise pytest.UsageError(
        f"CLASSCAM_TEST_DATABASE={TEST_DATABASE!r}: expected 'sqlite' or 'postgresql'"
    )


@pytest.fixture(scope="session")
def pg_worker_database() -> Iterator[WorkerDatabase]:
    """This worker's PostgreSQL database for ``sqlite_url`` (pg_worker.py), dropped at the end."""
    try:
        database = WorkerDatabase(PG_BASE)
    except OperationalError as exc:  # pragma: no cover - depends on the machine
        # PostgreSQL is part of the test environment; its absence is a failure, not a skip.
        pytest.fail(f"PostgreSQL not reachable at {PG_BASE}: {exc}")
    try:
        yield database
    finally:
        database.drop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied per test (migrating each time costs more than tests)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """The test's own migrated database: a copy of the SQLite template or, with
    ``CLASSCAM_TEST_DATABASE=postgresql``, the worker's PostgreSQL database as migrations left
    it (the connections earlier tests left open are ended)."""
    if TEST_DATABASE == "sqlite":
        path = tmp_path / "classcam.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    database: WorkerDatabase = request.getfixturevalue("pg_worker_database")
    database.reset()
    yield database.url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A migrated PostgreSQL schema of its own, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_BASE)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        admin.dispose()
        # PostgreSQL is part of the test environment; its absence is a failure, not a skip.
        pytest.fail(f"PostgreSQL not reachable at {PG_BASE}: {exc}")
    url = f"{PG_BASE}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return generate_private_key()


@pytest.fixture
def harness(sqlite_url: str, tmp_path: Path, key: Ed25519PrivateKey) -> Iterator[Harness]:
    h = Harness(sqlite_url, tmp_path / "evidence")
    h.register("dev-1", key)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def pg_harness(pg_url: str, tmp_path: Path, key: Ed25519PrivateKey) -> Iterator[Harness]:
    """``harness`` on PostgreSQL: a migrated schema of its own, ``dev-1`` registered."""
    migrate(pg_url)
    h = Harness(pg_url, tmp_path / "evidence")
    h.register("dev-1", key)
    try:
        yield h
    finally:
        h.close()
