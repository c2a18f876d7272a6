"""``presence_changes.source`` holds ``heartbeat_timeout`` (issue 8).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29

The timeout sweep records its offlines with source ``heartbeat_timeout``, 17 characters in a
``VARCHAR(16)``: SQLite ignores the length, PostgreSQL refuses the insert, and the scheduler's
tick that sweeps fails with it for the whole fleet. The column is widened to 32. Every other
short column holds values that fit (enums, or text cut to its length where it is written).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("presence_changes") as batch:
        batch.alter_column(
            "source",
            existing_type=sa.String(length=16),
            type_=sa.String(length=32),
            existing_nullable=False,
        )


def downgrade() -> None:
    # Rows written since may not fit the old width; cut them rather than fail the downgrade.
    op.execute(
        sa.text(
            "UPDATE presence_changes SET source = substr(source, 1, 16) WHERE length(source) > 16"
        )
    )
    with op.batch_alter_table("presence_changes") as batch:
        batch.alter_column(
            "source",
            existing_type=sa.String(length=32),
            type_=sa.String(length=16),
            existing_nullable=False,
        )
