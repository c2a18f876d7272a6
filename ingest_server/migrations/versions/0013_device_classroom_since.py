"""When each camera was installed in its classroom (``devices.classroom_since``).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29

A clip that belongs to no session (a roll-call still, a reference picture) is read by the
institution whose classroom its camera was installed in when the clip was taken. Knowing only
where a camera is now would hand a moved camera's whole history to its new school; this column
says since when the current installation holds, and a clip from before it is nobody's but the
readers of everything. Existing cameras read NULL: installed there since before this was kept,
which is all the server knows of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("classroom_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("classroom_since")
