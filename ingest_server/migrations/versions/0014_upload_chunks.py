"""Chunks staged in the database (``upload_chunks``), so any ingest worker can finish any upload.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29

Ingest workers on one shared subscription each receive some of an upload's chunks: the broker
hands every message to one member of the group. Staged on each worker's own disk, no worker
held the whole file at ``fin`` (a 40-chunk upload took 21 ``fin`` rounds and twice the bytes).
A chunk's verified bytes are now written in the same transaction that records its range in
``uploads.received_ranges``, and the worker that gets ``fin`` assembles the file from these
rows. The rows of an upload are deleted when it is complete, rejected or expired.

Uploads that were receiving before this migration had their bytes in per-worker staging
files, which are no longer read: their ranges are cleared, so the device is told every byte
is missing at its next ``init`` or ``fin`` and sends them again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "upload_chunks",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("upload_id", sa.String(64), primary_key=True),
        sa.Column("byte_offset", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.execute("UPDATE uploads SET received_ranges = '[]' WHERE state = 'receiving'")


def downgrade() -> None:
    # The staged bytes go with the table: what was receiving is asked for again.
    op.drop_table("upload_chunks")
    op.execute("UPDATE uploads SET received_ranges = '[]' WHERE state = 'receiving'")
