"""Trainees per class and the per-user "reviewed" mark (issue 10).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29

``training_classes.trainees`` says how many people a course trains, so statistics can count
verified trainee-hours; classes imported before read 0 until the setup file says. Each
``session_reviews`` row is one person's "reviewed" mark on a session in the dashboard's review
queue: one per (session, reviewer), looked up by reviewer.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("training_classes") as batch:
        batch.add_column(
            sa.Column("trainees", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    op.create_table(
        "session_reviews",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("reviewed_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["class_sessions.id"],
            name=op.f("fk_session_reviews_session_id_class_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_reviews")),
        sa.UniqueConstraint(
            "session_id", "reviewer", name=op.f("uq_session_reviews_session_id_reviewer")
        ),
    )
    op.create_index(op.f("ix_session_reviews_reviewer"), "session_reviews", ["reviewer"])


def downgrade() -> None:
    op.drop_index(op.f("ix_session_reviews_reviewer"), table_name="session_reviews")
    op.drop_table("session_reviews")
    with op.batch_alter_table("training_classes") as batch:
        batch.drop_column("trainees")
