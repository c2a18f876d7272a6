"""Bounded uploads: rejection counters and a bounded sample; upload reaping (issue 8).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

``rejection_counts`` holds the exact number of refusals per (device, reason); ``rejections``
keeps only a sample (``ingest_server.uploads.rejections``), walked newest first by the new
(reason, id) index. The counters start from the rows already logged, so nothing counted before
is lost; the rows themselves are left for the processor's first prune. An upload may now be
``expired`` (a short string, no schema change).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rejection_counts",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_at", UTC, nullable=False),
        sa.Column("last_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("device_id", "reason", name="pk_rejection_counts"),
    )
    op.create_index("ix_rejections_reason_id", "rejections", ["reason", "id"])
    op.execute(
        "INSERT INTO rejection_counts (device_id, reason, count, first_at, last_at)"
        " SELECT coalesce(device_id, ''), reason, count(*), min(at), max(at)"
        " FROM rejections GROUP BY coalesce(device_id, ''), reason"
    )


def downgrade() -> None:
    # Expired uploads were receiving ones whose bytes are gone: receiving with nothing received.
    op.execute(
        "UPDATE uploads SET state = 'receiving', received_ranges = '[]' WHERE state = 'expired'"
    )
    op.drop_index("ix_rejections_reason_id", table_name="rejections")
    op.drop_table("rejection_counts")
