"""Facts a window proof needs: each session bound to the camera that films it, uploads keyed by
(device, upload id), clips naming their command
and clock offset, durable pending clip checks with decoded facts, events in server time with the
device's own time and offset, what the camera reported of its session, when a cut failed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Written by hand to match ``ingest_server/models.py``; ``tests/ingest_server/test_migrations.py``
proves the two agree. Batch mode recreates tables on SQLite (which cannot alter constraints)
and alters them in place on PostgreSQL. The clips' foreign key to uploads goes first, so that
no table refers to ``uploads`` while its primary key changes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(64)
UTC = sa.DateTime(timezone=True)


def _clip_facts_from_manifests() -> None:
    """Clips stored before this revision get their command and clock offset from the signed
    manifest they arrived under (kept in ``uploads.manifest``), so they go on proving their
    windows."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT clips.id, uploads.manifest FROM clips JOIN uploads"
            " ON uploads.upload_id = clips.upload_id AND uploads.device_id = clips.device_id"
        )
    ).all()
    for clip_id, manifest in rows:
        try:
            data = json.loads(manifest)
            cmd_id = data.get("cmd_id")
            offset = float(data.get("clock_offset_s") or 0.0)
        except (TypeError, ValueError, AttributeError):
            continue
        bind.execute(
            sa.text("UPDATE clips SET cmd_id = :cmd, clock_offset_s = :off WHERE id = :id"),
            {"cmd": cmd_id if isinstance(cmd_id, str) else None, "off": offset, "id": clip_id},
        )


def upgrade() -> None:
    with op.batch_alter_table("clips") as batch:
        batch.drop_constraint("fk_clips_upload_id_uploads", type_="foreignkey")
        batch.drop_constraint("uq_clips_upload_id", type_="unique")
        batch.add_column(sa.Column("cmd_id", ID, nullable=True))
        batch.add_column(
            sa.Column("clock_offset_s", sa.Float(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("uploads") as batch:
        batch.drop_constraint("pk_uploads", type_="primary")
        batch.create_primary_key("pk_uploads", ["upload_id", "device_id"])
    with op.batch_alter_table("clips") as batch:
        batch.create_unique_constraint("uq_clips_device_id_upload_id", ["device_id", "upload_id"])
        batch.create_foreign_key(
            "fk_clips_upload_id_uploads",
            "uploads",
            ["upload_id", "device_id"],
            ["upload_id", "device_id"],
        )
        batch.create_index("ix_clips_cmd_id", ["cmd_id"])

    _clip_facts_from_manifests()

    with op.batch_alter_table("clip_checks") as batch:
        for name, type_ in (
            ("black", sa.Boolean()),
            ("frozen", sa.Boolean()),
            ("mean_luma", sa.Float()),
            ("frozen_fraction", sa.Float()),
            ("checked_at", UTC),
        ):
            batch.alter_column(name, existing_type=type_, nullable=True)
        batch.add_column(sa.Column("decoded_frames", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("decoded_duration_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("frame_rate", sa.Float(), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index("ix_clip_checks_checked_at", ["checked_at"])

    # Checks made before now did not record what decoding found: check those clips again.
    op.execute("UPDATE clip_checks SET checked_at = NULL, attempts = 0")

    with op.batch_alter_table("device_events") as batch:
        batch.add_column(sa.Column("device_at", UTC, nullable=True))
        batch.add_column(sa.Column("clock_offset_s", sa.Float(), nullable=True))
    with op.batch_alter_table("class_sessions") as batch:
        batch.add_column(sa.Column("device_id", ID, nullable=True))
        batch.add_column(sa.Column("reported_recorded_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("device_clock_offset_s", sa.Float(), nullable=True))
        batch.create_index("ix_class_sessions_device_id", ["device_id"])
    # Sessions already begun were filmed by their classroom's camera of today.
    op.execute(
        "UPDATE class_sessions SET device_id = (SELECT devices.device_id FROM devices"
        " WHERE devices.classroom_id = class_sessions.classroom_id AND devices.enabled"
        " ORDER BY devices.device_id LIMIT 1) WHERE state != 'scheduled'"
    )
    with op.batch_alter_table("session_windows") as batch:
        batch.add_column(sa.Column("failed_at", UTC, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("session_windows") as batch:
        batch.drop_column("failed_at")
    with op.batch_alter_table("class_sessions") as batch:
        batch.drop_index("ix_class_sessions_device_id")
        batch.drop_column("device_clock_offset_s")
        batch.drop_column("reported_recorded_s")
        batch.drop_column("device_id")
    with op.batch_alter_table("device_events") as batch:
        batch.drop_column("clock_offset_s")
        batch.drop_column("device_at")
    op.execute("DELETE FROM clip_checks WHERE checked_at IS NULL")
    with op.batch_alter_table("clip_checks") as batch:
        batch.drop_index("ix_clip_checks_checked_at")
        for name in ("attempts", "frame_rate", "decoded_duration_s", "decoded_frames"):
            batch.drop_column(name)
    with op.batch_alter_table("clips") as batch:
        batch.drop_index("ix_clips_cmd_id")
        batch.drop_constraint("fk_clips_upload_id_uploads", type_="foreignkey")
        batch.drop_constraint("uq_clips_device_id_upload_id", type_="unique")
        batch.drop_column("clock_offset_s")
        batch.drop_column("cmd_id")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_constraint("pk_uploads", type_="primary")
        batch.create_primary_key("pk_uploads", ["upload_id"])
    with op.batch_alter_table("clips") as batch:
        batch.create_unique_constraint("uq_clips_upload_id", ["upload_id"])
        batch.create_foreign_key(
            "fk_clips_upload_id_uploads", "uploads", ["upload_id"], ["upload_id"]
        )
