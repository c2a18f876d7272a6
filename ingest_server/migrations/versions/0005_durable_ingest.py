"""Durable ingest: dead letters (issue 8).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

A device message that keeps failing while the database answers is written to ``dead_letters``
in a committed transaction and only then acknowledged to the broker, so a poison message neither
blocks ingest nor disappears.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

UTC = sa.DateTime(timezone=True)

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_at", UTC, nullable=False),
        sa.Column("last_at", UTC, nullable=False),
        sa.Column("replayed_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index(op.f("ix_dead_letters_last_at"), "dead_letters", ["last_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_dead_letters_last_at"), table_name="dead_letters")
    op.drop_table("dead_letters")
