"""Photo signatures: ``photos.phash`` holds a picture signature (``p2:...``, 3,221 characters,
``ingest_server.photo_hash``) instead of a 16-hex-digit pHash.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

Rows stored before keep their 64-bit pHash: ``rules.photo_match.picture_distance`` compares a
legacy hash with the legacy part of a signature under the old 2-bit rule, so old rows neither
crash nor lose the reuse check they had. Downgrading cuts nothing: signatures do not fit 16
characters, so it is refused while any is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("photos") as batch:
        batch.alter_column(
            "phash", existing_type=sa.String(16), type_=sa.Text(), existing_nullable=False
        )


def downgrade() -> None:
    longer = op.get_bind().scalar(sa.text("SELECT count(*) FROM photos WHERE length(phash) > 16"))
    if longer:
        raise RuntimeError(f"{longer} photo signature(s) do not fit the old 16-character column")
    with op.batch_alter_table("photos") as batch:
        batch.alter_column(
            "phash", existing_type=sa.Text(), type_=sa.String(16), existing_nullable=False
        )
