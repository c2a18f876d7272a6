"""The classcam server: receives, verifies, stores and records evidence (DESIGN.md §1 steps 5–6).

``ingest`` holds the chunk protocol's server half as a synchronous processor, ``consumer`` the
MQTT loop that feeds it, ``store`` the write-once evidence store, ``models``/``db`` the database
(migrated with Alembic), ``cli`` the ``classcam-server`` command.
"""
