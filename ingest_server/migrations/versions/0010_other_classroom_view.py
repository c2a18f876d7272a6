"""Clip checks say which other classroom a moved clip shows (issue 9: forged clips).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29

``clip_checks.other_classroom_id`` and ``other_view_similarity``: a clip that does not match
its own classroom's reference view but clearly matches another classroom's is that room's
footage signed with this room's key (the verdict's hard ``clip_other_classroom``). Both are
empty for clips checked before: they were judged as moved or not, as they are still.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("clip_checks") as batch:
        batch.add_column(sa.Column("other_classroom_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("other_view_similarity", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clip_checks") as batch:
        batch.drop_column("other_view_similarity")
        batch.drop_column("other_classroom_id")
