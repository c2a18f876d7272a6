"""Who may call the HTTP API: bearer tokens with roles, stored hashed.

Roles (issue 8, "people and roles on every route"):

- ``admin``: reads everything; opens and closes any session.
- ``supervisor``: reads everything (the supervision backend); writes nothing.
- ``institution``: reads only its own classrooms' sessions and devices, and their evidence;
  opens and closes sessions held in its classrooms.
- ``lecturer``: reads and opens/closes only sessions they teach; uploads their photos. The
  lecturer app tokens imported with the lecturers (``Lecturer.token_sha256``) act in this role.

A token is 256 random bits; only its SHA-256 is stored, so a copy of the database does not let
anyone in. The hash is looked up, not compared: there is no secret-dependent comparison to time.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ingest_server.models import ApiToken, Institution, Lecturer

TOKEN_PREFIX = "cc_"
# Longer than any token we make or import: a megabyte header is not hashed.
MAX_TOKEN_LENGTH = 512


class Role(StrEnum):
    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    INSTITUTION = "institution"
    LECTURER = "lecturer"


class TokenRefused(ValueError):
    """A token cannot be made as asked (unknown institution, role without its scope, ...)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """The person or system behind a request: what the routes and the audit log see."""

    role: Role
    # The ``api_tokens`` row; None for a lecturer app token (``Lecturer.token_sha256``).
    token_id: int | None
    name: str
    # Set for the institution role only.
    institution_id: str | None = None
    # Set for the lecturer role only.
    lecturer_id: str | None = None

    @property
    def reads_everything(self) -> bool:
        return self.role in (Role.ADMIN, Role.SUPERVISOR)


def hash_token(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe, with a prefix that secret scanners can spot."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    return token


def resolve_token(db: Session, token: str, now: datetime) -> Caller | None:
    """The caller a token stands for, or None if it is unknown, expired or revoked."""
    digest = hash_token(token)
    row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest))
    if row is not None:
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        return Caller(
            role=Role(row.role),
            token_id=row.id,
            name=row.name,
            institution_id=row.institution_id if row.role == Role.INSTITUTION else None,
            lecturer_id=row.lecturer_id if row.role == Role.LECTURER else None,
        )
    lecturer = db.scalar(select(Lecturer).where(Lecturer.token_sha256 == digest))
    if lecturer is None:
        return None
    return Caller(
        role=Role.LECTURER, token_id=None, name=f"app:{lecturer.id}", lecturer_id=lecturer.id
    )


def create_token(
    db: Session,
    role: Role,
    now: datetime,
    *,
    name: str = "",
    institution_id: str | None = None,
    lecturer_id: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Make a token; return its row and the token itself (shown once, never stored)."""
    if role == Role.INSTITUTION:
        if not institution_id or lecturer_id:
            raise TokenRefused("the institution role needs --institution and no --lecturer")
        if db.get(Institution, institution_id) is None:
            raise TokenRefused(f"no institution {institution_id}")
    elif role == Role.LECTURER:
        if not lecturer_id or institution_id:
            raise TokenRefused("the lecturer role needs --lecturer and no --institution")
        if db.get(Lecturer, lecturer_id) is None:
            raise TokenRefused(f"no lecturer {lecturer_id}")
    elif institution_id or lecturer_id:
        raise TokenRefused(f"the {role} role reads everything: no --institution or --lecturer")
    if expires_at is not None and expires_at <= now:
        raise TokenRefused("the token would expire before it is made")
    token = new_token()
    row = ApiToken(
        name=name or f"{role}-{now:%Y%m%d%H%M%S}",
        role=role.value,
        token_sha256=hash_token(token),
        institution_id=institution_id,
        lecturer_id=lecturer_id,
        created_at=now,
        expires_at=expires_at,
    )
    db.add(row)
    db.flush()
    return row, token


def list_tokens(db: Session, now: datetime, include_inactive: bool = False) -> list[ApiToken]:
    """Tokens by id; without ``include_inactive`` only those that still let someone in."""
    query = select(ApiToken).order_by(ApiToken.id)
    if not include_inactive:
        query = query.where(
            ApiToken.revoked_at.is_(None),
            or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
        )
    return list(db.scalars(query))


def revoke_token(db: Session, token_id: int, now: datetime) -> ApiToken:
    """Revoke a token by id (kept, for the record, with when it was revoked)."""
    row = db.get(ApiToken, token_id)
    if row is None:
        raise TokenRefused(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = now
    return row
