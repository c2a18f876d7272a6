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
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
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
    # No chunk for ``upload_stale_after_s``: its staged bytes were dropped; an init of the
    # same manifest starts it again from nothing.
    EXPIRED = "expired"


class Device(Base):
    """A camera allowed to upload: its Ed25519 public key verifies its manifests."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    classroom_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    # Since when it is installed in ``classroom_id`` (None: since before this was kept). A
    # session-less clip taken earlier is not its present classroom's (``evidence.scope``).
    classroom_since: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class Upload(Base):
    """One file on its way in; ``received_ranges`` only ever lists fsync'ed bytes.

    Keyed by (device, upload id): an upload id is the device's own name for a file, so one
    device can never take, block or spoil another device's upload by using the same id.
    """

    __tablename__ = "uploads"

    upload_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    device_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("devices.device_id"), primary_key=True, index=True
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


class UploadChunk(Base):
    """A verified chunk of an upload still receiving, staged in the database: written in the
    transaction that records its range, so whichever ingest worker receives ``fin`` can
    assemble the file (migration 0014). Deleted once the upload is complete, rejected or
    expired."""

    __tablename__ = "upload_chunks"

    device_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    upload_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    byte_offset: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Clip(Base):
    """A verified file in the evidence store; ``path`` is relative to the store's root.

    Every field comes from the signed manifest it arrived under: ``cmd_id`` names the command
    (and so the window) it answers, ``clock_offset_s`` the device's clock offset the cut bounds
    were made with.
    """

    __tablename__ = "clips"
    __table_args__ = (
        ForeignKeyConstraint(
            ["upload_id", "device_id"],
            ["uploads.upload_id", "uploads.device_id"],
            name="fk_clips_upload_id_uploads",
        ),
        UniqueConstraint("device_id", "upload_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    upload_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    device_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("devices.device_id"), index=True
    )
    session_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    cmd_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    clock_offset_s: Mapped[float] = mapped_column(Float, default=0.0)
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
    """A bounded sample of refused messages (the latest few per reason, ``RejectionCount``
    holds the exact counts); device and upload may be unknown."""

    __tablename__ = "rejections"
    # Pruning keeps the newest rows of a reason: walk them by (reason, id).
    __table_args__ = (Index("ix_rejections_reason_id", "reason", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    device_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    upload_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)


class RejectionCount(Base):
    """How many messages of a device were refused for a reason, exactly, however many; an
    unknown device counts under ``""``."""

    __tablename__ = "rejection_counts"

    device_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    first_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_at: Mapped[datetime] = mapped_column(UtcDateTime())


# -- Who teaches what, where and when (issue: sessions, windows, photos, verdicts) -------------


class Institution(Base):
    """A training school."""

    __tablename__ = "institutions"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))


class Classroom(Base):
    """A room with a camera; its location carries its datum (DESIGN.md: datums matter)."""

    __tablename__ = "classrooms"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    institution_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("institutions.id"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    datum: Mapped[str] = mapped_column(String(8))
    radius_m: Mapped[float] = mapped_column(Float, default=100.0)
    # The reference still of the camera's view, to tell when it was turned away or swapped.
    reference_upload_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))


class Lecturer(Base):
    """A lecturer; the phone app authenticates with a token whose SHA-256 is kept here."""

    __tablename__ = "lecturers"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    institution_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("institutions.id"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)


class TrainingClass(Base):
    """A subsidised course: a series of sessions."""

    __tablename__ = "training_classes"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    institution_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("institutions.id"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    # How many people the course trains: statistics count verified trainee-hours with it
    # (migration 0012; 0 where the setup file does not say).
    trainees: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class SessionState(StrEnum):
    SCHEDULED = "scheduled"
    OPEN = "open"
    CLOSED = "closed"


class ClassSession(Base):
    """One class session: planned (start, preset duration), as it happened, and its verdict."""

    __tablename__ = "class_sessions"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    class_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("training_classes.id"), index=True
    )
    classroom_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("classrooms.id"), index=True
    )
    lecturer_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("lecturers.id"), index=True
    )
    scheduled_start: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    duration_s: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default=SessionState.SCHEDULED.value)
    opened_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    recorded_s: Mapped[float | None] = mapped_column(Float)
    # The camera that films it: the one installed in its classroom when it began (a camera
    # moved in or swapped later does not speak for it).
    device_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    # What the camera itself said: its recorded seconds, and its clock offset when it opened.
    reported_recorded_s: Mapped[float | None] = mapped_column(Float)
    device_clock_offset_s: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(16), default="pending")
    # JSON list of {"code": ..., "params": {...}}; sentences are rendered per reader language.
    verdict_reasons: Mapped[str] = mapped_column(Text, default="[]")
    verdict_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class SessionWindow(Base):
    """A random window of a session. Never shown or sent anywhere before it has ended."""

    __tablename__ = "session_windows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("class_sessions.id"), index=True
    )
    idx: Mapped[int] = mapped_column(Integer)
    start: Mapped[datetime] = mapped_column(UtcDateTime())
    end: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    cmd_id: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    requested_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    request_count: Mapped[int] = mapped_column(Integer, default=0)
    # What the camera said of its cut (unsigned hints: they may make the server ask, never
    # make it accept; the proof is a clip whose signed manifest names ``cmd_id``).
    upload_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    failed_reason: Mapped[str | None] = mapped_column(String(32))
    failed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class SessionReview(Base):
    """A person's "reviewed" mark on a session (the dashboard's review queue): one per
    reviewer (``evidence.reviews.reviewer_of``: one token's) and session, set and cleared by
    that reviewer. It says who looked, not what the verdict is: verdicts stay the rules' alone."""

    __tablename__ = "session_reviews"
    __table_args__ = (UniqueConstraint("session_id", "reviewer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("class_sessions.id"))
    reviewer: Mapped[str] = mapped_column(String(200), index=True)
    reviewed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Photo(Base):
    """A lecturer's opening or closing photo, stored write-once."""

    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("class_sessions.id"), index=True
    )
    lecturer_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("lecturers.id"))
    kind: Mapped[str] = mapped_column(String(8))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    phash: Mapped[str] = mapped_column(Text)  # picture signature (photo_hash)
    path: Mapped[str] = mapped_column(String(512))
    taken_at: Mapped[datetime] = mapped_column(UtcDateTime())
    time_source: Mapped[str] = mapped_column(String(8))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    datum: Mapped[str] = mapped_column(String(8))
    place_source: Mapped[str] = mapped_column(String(8))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ClipCheck(Base):
    """The durable check of a stored clip: written with the clip, in the same transaction, with
    ``checked_at`` empty (pending); filled in by the checker, which resumes after a restart.

    ``decoded_*`` is what the server's own decoding found (not what the manifest claims);
    ``error`` says why the clip could not be decoded; ``other_classroom_id`` names the other
    classroom whose view the clip shows, when it shows another classroom's.
    """

    __tablename__ = "clip_checks"

    clip_id: Mapped[int] = mapped_column(Integer, ForeignKey("clips.id"), primary_key=True)
    black: Mapped[bool | None] = mapped_column(Boolean)
    frozen: Mapped[bool | None] = mapped_column(Boolean)
    moved: Mapped[bool | None] = mapped_column(Boolean)
    mean_luma: Mapped[float | None] = mapped_column(Float)
    frozen_fraction: Mapped[float | None] = mapped_column(Float)
    reference_similarity: Mapped[float | None] = mapped_column(Float)
    # The other classroom whose reference view a moved clip clearly shows, and how well.
    other_classroom_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    other_view_similarity: Mapped[float | None] = mapped_column(Float)
    decoded_frames: Mapped[int | None] = mapped_column(Integer)
    decoded_duration_s: Mapped[float | None] = mapped_column(Float)
    frame_rate: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    checked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    error: Mapped[str | None] = mapped_column(Text)


class DeviceEvent(Base):
    """Every event a device reported, kept as evidence (its own ``event_id`` dedupes)."""

    __tablename__ = "device_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    # Server time (the device's time less the offset it stated), then the device's own.
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    device_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    clock_offset_s: Mapped[float | None] = mapped_column(Float)
    session_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    cmd_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    data: Mapped[str] = mapped_column(Text, default="{}")
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DeviceHealth(Base):
    """The latest word from each device: presence and its last heartbeat."""

    __tablename__ = "device_health"

    device_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    status: Mapped[str] = mapped_column(String(8), default="offline")
    status_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    heartbeat: Mapped[str | None] = mapped_column(Text)


class PresenceChange(Base):
    """Online/offline transitions (from retained status and heartbeat timeouts)."""

    __tablename__ = "presence_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    online: Mapped[bool] = mapped_column(Boolean)
    # "status", "heartbeat" or "heartbeat_timeout" (migration 0011 widened it from 16).
    source: Mapped[str] = mapped_column(String(32))


class FeedEvent(Base):
    """The append-only feed the supervision backend reads with a cursor (``seq``)."""

    __tablename__ = "feed_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    payload: Mapped[str] = mapped_column(Text)


class AuditEntry(Base):
    """One evidence action in the append-only, hash-chained audit log (``ingest_server.audit``):
    ``hash`` covers every other field and ``prev_hash``, the previous row's ``hash``. The database
    refuses UPDATE and DELETE (migration 0008's triggers)."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    action: Mapped[str] = mapped_column(String(32))
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(200), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The audit log's last ``seq`` and ``hash`` (one row, ``id`` 1), moved forward in the
    transaction of every append: a log whose tail was cut no longer reaches it."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class DeadLetter(Base):
    """A device message that kept failing while the database answered (a poison message): kept
    whole with its last error, so nothing acknowledged is silently dropped and it can be
    replayed (``classcam-server dead-letters --replay``) once the bug is fixed."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    replayed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ApiToken(Base):
    """A bearer token of the HTTP API with its role (``ingest_server.auth``). Only the token's
    SHA-256 is kept: the token itself is shown once, when it is made."""

    __tablename__ = "api_tokens"
    # Each role with exactly the scope it needs: a scoped role without its scope id would
    # compile to ``IS NULL`` in the scoping query (as migration 0007).
    __table_args__ = (
        CheckConstraint(
            "(role IN ('admin', 'supervisor') AND institution_id IS NULL AND lecturer_id IS NULL)"
            " OR (role = 'institution' AND institution_id IS NOT NULL AND lecturer_id IS NULL)"
            " OR (role = 'lecturer' AND lecturer_id IS NOT NULL AND institution_id IS NULL)",
            name="scope_matches_role",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    # The institution role sees only its own classrooms; the lecturer role its own sessions.
    institution_id: Mapped[str | None] = mapped_column(
        String(ID_LENGTH), ForeignKey("institutions.id")
    )
    lecturer_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), ForeignKey("lecturers.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class DeviceCommand(Base):
    """A command the API accepted for a device (open/close), kept until the device answers
    with an event naming its ``cmd_id``: the scheduler sends it, and again every
    ``command_resend_s`` while unanswered, until ``expires_at``."""

    __tablename__ = "device_commands"

    cmd_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    sends: Mapped[int] = mapped_column(Integer, default=0)
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
