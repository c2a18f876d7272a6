"""The ingest tables as typed SQLAlchemy 2 ORM classes.

``migrations/versions`` must create exactly this schema: ``tests/ingest_server/test_migrations``
compares the two on SQLite and PostgreSQL. Enumerations are stored as short strings (not native
enums) so adding a reason later is a code change, not a type migration.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.clock import to_utc
from common.ranges import Range

# Deterministic constraint names, identical on every backend, so migrations can name them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 64


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return to_utc(value) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return to_utc(value) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UploadState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    REJECTED = "rejected"


class Device(Base):
    """A camera allowed to upload: its Ed25519 public key verifies its manifests."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    classroom_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class Upload(Base):
    """One file on its way in; ``received_ranges`` only ever lists fsync'ed bytes."""

    __tablename__ = "uploads"

    upload_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    device_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("devices.device_id"), index=True
    )
    # The signed manifest exactly as received (signature included): evidence in itself.
    manifest: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    chunk_size: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=UploadState.RECEIVING.value)
    reject_reason: Mapped[str | None] = mapped_column(String(32))
    received_ranges: Mapped[str] = mapped_column(Text, default="[]")
    chunks_received: Mapped[int] = mapped_column(Integer, default=0)
    chunks_duplicate: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    @property
    def ranges(self) -> list[Range]:
        """``received_ranges`` decoded."""
        return [(int(a), int(b)) for a, b in json.loads(self.received_ranges)]

    @ranges.setter
    def ranges(self, value: list[Range]) -> None:
        self.received_ranges = json.dumps([[a, b] for a, b in value], separators=(",", ":"))


class Clip(Base):
    """A verified file in the evidence store; ``path`` is relative to the store's root."""

    __tablename__ = "clips"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    upload_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("uploads.upload_id"), unique=True
    )
    device_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("devices.device_id"), index=True
    )
    session_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(512))
    requested_start: Mapped[datetime | None] = mapped_column(UtcDateTime())
    requested_end: Mapped[datetime | None] = mapped_column(UtcDateTime())
    cut_start: Mapped[datetime] = mapped_column(UtcDateTime())
    cut_end: Mapped[datetime] = mapped_column(UtcDateTime())
    duration_s: Mapped[float] = mapped_column(Float)
    frames: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    codec: Mapped[str] = mapped_column(String(32))
    stored_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Rejection(Base):
    """A durable, countable log of every refused message (device and upload may be unknown)."""

    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    device_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    upload_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
