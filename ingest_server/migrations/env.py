"""Alembic environment for classcam's server database.

``ingest_server.db.migrate`` hands us a ready engine (``config.attributes["engine"]``) so SQLite
gets its pragmas and URLs need no escaping; the plain ``alembic`` command falls back to
``sqlalchemy.url`` or the server settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from ingest_server.db import make_engine
from ingest_server.models import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from ingest_server.settings import Settings

    return Settings().database_url


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) instead of running it."""
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given: Engine | None = config.attributes.get("engine")
    engine = given or make_engine(_database_url())
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # Rebuilding a table that others refer to (batch mode) needs foreign keys off;
                # SQLite ignores this pragma inside a transaction, so it goes before BEGIN,
                # and every reference is checked before the migration commits.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
                render_as_batch=connection.dialect.name == "sqlite",
                # make_engine has SQLAlchemy emit BEGIN on SQLite too, so a migration there is
                # all-or-nothing like on PostgreSQL.
                transactional_ddl=True,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
    finally:
        if given is None:
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
