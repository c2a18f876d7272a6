"""The Alembic migrations create exactly the schema ``models.py`` declares, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect

from ingest_server.db import make_engine, migrate
from ingest_server.models import Base

TABLES = {
    "devices",
    "uploads",
    "upload_chunks",
    "clips",
    "rejections",
    "rejection_counts",
    "institutions",
    "classrooms",
    "lecturers",
    "training_classes",
    "class_sessions",
    "session_windows",
    "photos",
    "clip_checks",
    "device_events",
    "device_health",
    "presence_changes",
    "feed_events",
    "audit_log",
    "audit_head",
    "dead_letters",
    "api_tokens",
    "device_commands",
    "session_reviews",
}


def _diffs(url: str, metadata: MetaData) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _check(url: str) -> None:
    migrate(url)
    migrate(url)  # idempotent: already at head
    assert _diffs(url, Base.metadata) == []
    # The comparison is not vacuous: against an empty schema it sees every table.
    removed = {d[1].name for d in _diffs(url, MetaData()) if d[0] == "remove_table"}  # type: ignore[index]
    assert removed == TABLES
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) == TABLES | {"alembic_version"}
        assert {ix["name"] for ix in inspector.get_indexes("clips")} >= {"ix_clips_device_id"}
    finally:
        engine.dispose()


def test_migration_matches_models_on_sqlite(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'm.db'}")


def test_migration_matches_models_on_postgresql(pg_url: str) -> None:
    _check(pg_url)


def test_sqlite_engine_is_durable(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'd.db'}")
    try:
        with engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys")
            }
    finally:
        engine.dispose()
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1}


@pytest.mark.parametrize("url", ["sqlite:///relative/x.db"])
def test_relative_sqlite_urls_become_absolute(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest_server.settings import Settings

    monkeypatch.chdir(tmp_path)
    assert Settings(database_url=url).database_url == f"sqlite:///{tmp_path}/relative/x.db"
    defaults = Settings(data_dir=Path("state"))
    assert defaults.database_url == f"sqlite:///{tmp_path}/state/classcam.db"
    assert defaults.evidence_dir == tmp_path / "state" / "evidence"
