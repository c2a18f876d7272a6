"""Fixtures for the ingest server: real SQLite / PostgreSQL databases, real stores, real keys."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import Harness
from sqlalchemy import text

from common.signing import generate_private_key
from ingest_server.db import make_engine, migrate

PG_BASE = os.environ.get("CLASSCAM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied per test (migrating each time costs more than tests)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "classcam.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


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
