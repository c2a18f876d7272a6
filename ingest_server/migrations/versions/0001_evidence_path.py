"""The evidence path: devices, uploads, clips and the rejection log.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Written by hand to match ``ingest_server/models.py`` (constraint names follow its naming
convention); ``tests/ingest_server/test_migrations.py`` proves the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(64)
UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("device_id", ID, nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("classroom_id", ID, nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_devices"),
    )
    op.create_table(
        "uploads",
        sa.Column("upload_id", ID, nullable=False),
        sa.Column("device_id", ID, nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reject_reason", sa.String(32), nullable=True),
        sa.Column("received_ranges", sa.Text(), nullable=False),
        sa.Column("chunks_received", sa.Integer(), nullable=False),
        sa.Column("chunks_duplicate", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name="fk_uploads_device_id_devices"
        ),
        sa.PrimaryKeyConstraint("upload_id", name="pk_uploads"),
    )
    op.create_index("ix_uploads_device_id", "uploads", ["device_id"])
    op.create_table(
        "clips",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("upload_id", ID, nullable=False),
        sa.Column("device_id", ID, nullable=False),
        sa.Column("session_id", ID, nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("requested_start", UTC, nullable=True),
        sa.Column("requested_end", UTC, nullable=True),
        sa.Column("cut_start", UTC, nullable=False),
        sa.Column("cut_end", UTC, nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("codec", sa.String(32), nullable=False),
        sa.Column("stored_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name="fk_clips_device_id_devices"
        ),
        sa.ForeignKeyConstraint(
            ["upload_id"], ["uploads.upload_id"], name="fk_clips_upload_id_uploads"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_clips"),
        sa.UniqueConstraint("upload_id", name="uq_clips_upload_id"),
    )
    op.create_index("ix_clips_device_id", "clips", ["device_id"])
    op.create_index("ix_clips_session_id", "clips", ["session_id"])
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", UTC, nullable=False),
        sa.Column("device_id", ID, nullable=True),
        sa.Column("upload_id", ID, nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rejections"),
    )
    op.create_index("ix_rejections_at", "rejections", ["at"])
    op.create_index("ix_rejections_device_id", "rejections", ["device_id"])


def downgrade() -> None:
    op.drop_table("rejections")
    op.drop_table("clips")
    op.drop_table("uploads")
    op.drop_table("devices")
