"""Device commands the API accepted, kept until answered (issue 8).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

``device_commands`` holds each open/close the API answered 202 for, before it answers: the
scheduler publishes it, and again every ``command_resend_s`` until its device stores an event
naming its ``cmd_id`` (``answered_at``) or ``expires_at`` passes, so neither a server restart
before the publish nor a broker that lost it loses an accepted command.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "device_commands",
        sa.Column("cmd_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("last_sent_at", UTC, nullable=True),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("answered_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("cmd_id", name=op.f("pk_device_commands")),
    )
    op.create_index(op.f("ix_device_commands_device_id"), "device_commands", ["device_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_device_commands_device_id"), table_name="device_commands")
    op.drop_table("device_commands")
