"""One migrated PostgreSQL database per test worker, put back as migrated before each test.

``CLASSCAM_TEST_DATABASE=postgresql`` runs the database-facing suite on this (conftest.py's
``sqlite_url``). Measured on the 2-core test machine under load: putting the database back
takes ~10 ms; a database copied per test (``CREATE DATABASE ... TEMPLATE``) 0.15-0.6 s, a
schema migrated per test 0.3-0.4 s, TRUNCATE of every table 0.2 s.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import MetaData, Table, text
from sqlalchemy.engine import make_url

from ingest_server.db import make_engine, migrate

# Commits need not reach the disk: no test crashes the PostgreSQL server, and what a client
# sees of a commit (visible to others at once, locks released) is the same either way.
TEST_OPTIONS = "-c synchronous_commit=off"


class WorkerDatabase:
    """A database of its own on the server at ``base_url``, migrated once. ``reset`` ends
    every other connection to it (a test's leftovers), empties every table with triggers off
    (audit_log refuses deletes otherwise), and puts back the rows the migrations inserted and
    every sequence's position."""

    def __init__(self, base_url: str) -> None:
        self.name = f"classcam_t_{uuid.uuid4().hex[:12]}"
        base = make_url(base_url)
        self.url = base.set(
            database=self.name, query={**base.query, "options": TEST_OPTIONS}
        ).render_as_string(hide_password=False)
        self._admin = make_engine(base_url, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        migrate(self.url)
        self._engine = make_engine(self.url)
        self._tables: list[Table] = []
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._sequences: list[tuple[str, int, bool]] = []
        metadata = MetaData()
        metadata.reflect(self._engine)
        with self._engine.connect() as conn:
            for table in metadata.sorted_tables:
                if table.name == "alembic_version":
                    continue
                self._tables.append(table)
                rows = [dict(row) for row in conn.execute(table.select()).mappings()]
                if rows:
                    self._rows[table.name] = rows
            names = conn.execute(
                text("SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()")
            ).scalars()
            for name in names:
                last, called = conn.execute(
                    text(f'SELECT last_value, is_called FROM "{name}"')
                ).one()
                self._sequences.append((name, last, called))

    def reset(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            for table in reversed(self._tables):
                conn.execute(table.delete())
            for table in self._tables:
                if table.name in self._rows:
                    conn.execute(table.insert(), self._rows[table.name])
            for name, last, called in self._sequences:
                conn.execute(
                    text("SELECT setval(:name, :last, :called)"),
                    {"name": f'"{name}"', "last": last, "called": called},
                )

    def drop(self) -> None:
        self._engine.dispose()
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()
