"""Engines, sessions and migrations for SQLite (one machine) and PostgreSQL (production).

SQLite is set up for evidence: WAL (readers never block the ingest writer), ``synchronous=FULL``
(a committed row survives a power cut, which is what an ack promises), foreign keys on, and
SQLAlchemy emitting ``BEGIN IMMEDIATE`` itself, because Python's sqlite3 driver otherwise leaves
DDL and SELECTs outside transactions (see SQLAlchemy's "Transactions with SQLite" notes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from common.clock import Clock
from ingest_server.audit import KEY_INFO, AuditKey, audit_arrivals
from ingest_server.feed import CLOCK_INFO
from ingest_server.settings import absolute_sqlite_url

PACKAGE_DIR = Path(__file__).resolve().parent
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"
ALEMBIC_INI = PACKAGE_DIR / "alembic.ini"

SessionFactory = sessionmaker[Session]


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take BEGIN away from the driver; the "begin" hook below emits it for every transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


BEGIN_OPTION = "classcam_sqlite_begin"


def _sqlite_on_begin(connection: Any) -> None:
    # IMMEDIATE: take the write lock up front. A deferred transaction that reads, then writes,
    # fails at once with "database is locked" when another connection committed in between
    # (SQLite cannot upgrade its snapshot), and busy_timeout does not help it; an immediate one
    # waits its turn. Sessions that only read (``reader_factory``) begin DEFERRED, so a long
    # read, such as an API request, never holds the write lock (WAL readers block nobody).
    mode = connection.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
    connection.exec_driver_sql(f"BEGIN {'DEFERRED' if mode == 'DEFERRED' else 'IMMEDIATE'}")


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine for ``database_url`` with classcam's durability settings applied."""
    url = make_url(absolute_sqlite_url(database_url))
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_session_factory(
    engine: Engine, audit_key: AuditKey | None = None, clock: Clock | None = None
) -> SessionFactory:
    """Sessions that keep loaded rows usable after commit (the processor reads them on), and
    that write an audit row for each piece of evidence they store (``audit.audit_arrivals``),
    keyed by ``audit_key`` (``audit.load_key(settings.audit_key_file)``; every process that
    appends must pass it: without it rows get a throwaway key and ``audit verify`` fails).
    ``clock`` stamps the feed, the audit log and session changes (``feed.session_clock``;
    the system clock when not given)."""
    info: dict[str, object] = {KEY_INFO: audit_key} if audit_key is not None else {}
    if clock is not None:
        info[CLOCK_INFO] = clock
    factory = sessionmaker(engine, expire_on_commit=False, info=info)
    event.listen(factory, "after_flush", audit_arrivals)
    return factory


def reader_factory(factory: SessionFactory) -> SessionFactory:
    """Sessions like ``factory``'s for reading only: on SQLite they begin DEFERRED and take no
    write lock. Never write through them (a deferred read-then-write can fail on SQLite)."""
    bind = factory.kw["bind"]
    return sessionmaker(
        bind.execution_options(**{BEGIN_OPTION: "DEFERRED"}), expire_on_commit=False
    )


def alembic_config(engine: Engine | None = None) -> Config:
    """Alembic's config for the packaged migrations; with ``engine``, migrations use it."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        # Passed as an attribute, not a URL string: no ConfigParser %-escaping of passwords
        # and query strings, and SQLite gets the pragmas above.
        config.attributes["engine"] = engine
    return config


def migrate(database_url: str | Engine, revision: str = "head") -> None:
    """Bring the database at ``database_url`` (or an engine) up to ``revision``."""
    engine = make_engine(database_url) if isinstance(database_url, str) else database_url
    try:
        command.upgrade(alembic_config(engine), revision)
    finally:
        if isinstance(database_url, str):
            engine.dispose()


def schema_revision(database_url: str) -> tuple[str | None, str]:
    """The database's migration revision (None: never migrated) and the code's head."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return current, head or ""
