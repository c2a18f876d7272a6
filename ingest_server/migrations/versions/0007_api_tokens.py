"""API tokens with roles (issue 8).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

``api_tokens`` keeps the SHA-256 of each bearer token of the HTTP API (never the token), its
role (admin, supervisor, institution, lecturer), the institution or lecturer it is scoped to,
and when it expires or was revoked (``ingest_server.auth``). A CHECK keeps each role to
exactly the scope it needs: an institution or lecturer token always has its scope id.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)
# Each role with exactly the scope it needs (the same CHECK as ``models.ApiToken``).
SCOPE_MATCHES_ROLE = (
    "(role IN ('admin', 'supervisor') AND institution_id IS NULL AND lecturer_id IS NULL)"
    " OR (role = 'institution' AND institution_id IS NOT NULL AND lecturer_id IS NULL)"
    " OR (role = 'lecturer' AND lecturer_id IS NOT NULL AND institution_id IS NULL)"
)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("institution_id", sa.String(length=64), nullable=True),
        sa.Column("lecturer_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=True),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["institution_id"],
            ["institutions.id"],
            name=op.f("fk_api_tokens_institution_id_institutions"),
        ),
        sa.ForeignKeyConstraint(
            ["lecturer_id"], ["lecturers.id"], name=op.f("fk_api_tokens_lecturer_id_lecturers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_tokens_token_sha256")),
        # A scoped role without its scope would compile to ``IS NULL`` in the scoping query.
        sa.CheckConstraint(SCOPE_MATCHES_ROLE, name=op.f("ck_api_tokens_scope_matches_role")),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
