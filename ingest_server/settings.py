"""The server's one typed config, read from ``CLASSCAM_*`` environment variables (STYLE.md).

Everything has a default that runs on one machine: a SQLite file and a filesystem evidence store
under ``data_dir`` (``./var``), a broker on localhost. Paths are made absolute when the settings
are loaded, so a later ``chdir`` (Alembic, a daemon) cannot move the database.
"""

from __future__ import annotations

import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.schemas import MAX_CHUNK_SIZE
from common.topics import SHARED_GROUP

_SQLITE_PREFIX = re.compile(r"^sqlite(\+\w+)?:///")
# The broker account firmware_config/mosquitto.acl grants up/# read and down/+/ack and
# down/+/event_ack write.
SERVER_USER = "classcam-server"
# The scheduler's own account (down/+/cmd and down/+/schedule write only): the broker binds
# client id to username, so two connections on one account would keep disconnecting each other.
SCHEDULER_USER = "classcam-scheduler"


def _default_client_id() -> str:
    # Stable across restarts (the broker keeps this client's session), distinct per host.
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    return f"classcam-ingest-{host}"


def absolute_sqlite_url(url: str) -> str:
    """Turn a relative SQLite file URL into an absolute one; leave other URLs alone."""
    match = _SQLITE_PREFIX.match(url)
    if not match:
        return url
    path, sep, query = url[match.end() :].partition("?")
    if not path or path == ":memory:" or path.startswith("/"):
        return url
    return f"{match.group(0)}{Path(path).resolve()}{sep}{query}"


class Settings(BaseSettings):
    """Server configuration; every field can be set as ``CLASSCAM_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CLASSCAM_", extra="ignore")

    data_dir: Path = Path("var")
    # Derived from data_dir unless set (pydantic validates fields in declaration order).
    database_url: str = Field(
        default_factory=lambda data: f"sqlite:///{data['data_dir'] / 'classcam.db'}"
    )
    evidence_dir: Path = Field(default_factory=lambda data: data["data_dir"] / "evidence")
    # Where committed evidence is kept (docs/storage.md): "fs" under evidence_dir; "s3" in an
    # S3-compatible bucket with Object Lock, evidence_dir then holding only the upload staging
    # and a local cache of what was stored or read. Credentials come from boto3's standard
    # chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, an instance role).
    evidence_store: Literal["fs", "s3"] = "fs"
    s3_endpoint_url: str | None = None  # None: AWS itself
    s3_bucket: str = "classcam-evidence"
    s3_region: str = "us-east-1"
    # COMPLIANCE: nobody, the bucket's root account included, can delete or shorten the lock
    # before it ends; GOVERNANCE: holders of s3:BypassGovernanceRetention can.
    s3_lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE"
    s3_retention_days: int = Field(default=1095, ge=1, le=36500)
    # The audit log's HMAC key (ingest_server.audit): made on first use; keep it off the
    # database host and back it up apart from the database.
    audit_key_file: Path = Field(default_factory=lambda data: data["data_dir"] / "audit.key")
    # The Ed25519 key that signs evidence exports (ingest_server.export): made on first use;
    # its public half is in every archive and `classcam-server export-key` prints it to pin.
    export_key_file: Path = Field(default_factory=lambda data: data["data_dir"] / "export.key")

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_username: str = SERVER_USER
    mqtt_password: str | None = None
    mqtt_password_file: Path | None = None
    mqtt_scheduler_username: str = SCHEDULER_USER
    mqtt_scheduler_password: str | None = None
    mqtt_scheduler_password_file: Path | None = None
    # TLS to the broker, checked against this CA (None: the system's CAs) and the host name.
    # Off by default: the server usually reaches the broker on loopback (devices use TLS).
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    mqtt_client_id: str = Field(default_factory=_default_client_id)
    mqtt_keepalive_s: int = Field(default=60, ge=5)
    # MQTT 5: how long the broker keeps our session (and queues device messages) while we are
    # down. A week outlives any maintenance window.
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    # None or "" subscribes without $share (amqtt has no shared subscriptions).
    shared_group: str | None = SHARED_GROUP

    # Where received chunks wait for their upload's fin (ingest_server/ingest.py): "local", a
    # staging file in evidence_dir (one server process: the fastest); "database", rows of
    # upload_chunks, which every ingest worker can read: required, on every process of the
    # deployment, to run several (`classcam-server ingest`; docs/deployment.md).
    staging: Literal["local", "database"] = "local"
    # With several workers each decodes the clips it stored; a pending check of another's clip
    # is taken over once the clip is this old (its worker died, or the check failed there).
    clip_check_adopt_s: float = Field(default=120.0, gt=0)

    max_chunk_size: int = Field(default=MAX_CHUNK_SIZE, gt=0, le=MAX_CHUNK_SIZE)
    max_upload_size: int = Field(default=512 * 1024 * 1024, gt=0)
    # Group commit: flush (fsync + DB) at least this often while messages keep coming.
    flush_every_messages: int = Field(default=256, gt=0)
    flush_interval_s: float = Field(default=0.2, gt=0)
    # Once caught up with the broker, when the queue runs dry, wait this long after the oldest
    # message not yet committed for more before committing: at a fleet's steady ~300
    # heartbeats/s a commit per message cost ~0.5 ms of CPU each (bench/heartbeat_ingest.py).
    # Upload init/fin and events answer at once.
    flush_linger_s: float = Field(default=0.05, ge=0)
    # Bounded uploads: an upload with no chunk this long is reaped (staged bytes dropped,
    # marked expired) by a pass every upload_reap_interval_s; a device may hold this many
    # uploads open at once; refusals keep exact counters plus the latest few rows per reason.
    upload_stale_after_s: float = Field(default=2 * 24 * 3600.0, gt=0)
    upload_reap_interval_s: float = Field(default=600.0, gt=0)
    max_open_uploads_per_device: int = Field(default=32, ge=1)
    # ... and at most this many bytes staged for them (a day's clips are tens of MB): what one
    # device can make the server hold on disk or, staging in the database, in PostgreSQL.
    max_open_bytes_per_device: int = Field(default=1024**3, ge=1)
    rejection_sample_per_reason: int = Field(default=100, ge=1)
    rejection_sample_max: int = Field(default=2000, ge=1)
    # At most this many QoS 1 messages handed to us and not yet acknowledged (MQTT 5
    # ReceiveMaximum); each is acknowledged only after the commit that made it durable.
    mqtt_max_inflight: int = Field(default=256, ge=1, le=65535)
    # A message whose handling keeps failing is tried this often, with backoff, then kept in
    # dead_letters (only while the database answers: otherwise it waits, unacknowledged).
    ingest_max_attempts: int = Field(default=5, ge=1)
    ingest_retry_base_s: float = Field(default=0.2, gt=0)
    ingest_retry_cap_s: float = Field(default=10.0, gt=0)
    # Caught up with the broker: queue empty and nothing received for this long since the
    # (re)connect; heartbeat-timeout sweeps wait for it.
    ingest_quiet_s: float = Field(default=0.25, gt=0)

    # Sessions and verdicts (DESIGN.md §1 steps 3, 7, 8).
    windows_per_session: int = Field(default=3, ge=0, le=20)
    window_length_s: float = Field(default=60.0, gt=0)
    # A window is asked for this long after it ends, so the device has closed its segment.
    window_request_delay_s: float = Field(default=10.0, ge=0)
    # A cut asked for but not answered is asked again this often while the device is online.
    window_retry_s: float = Field(default=600.0, gt=0)
    # How many times a window is asked for at most (the first request included): again when
    # its camera comes back online or stays silent, or its upload was refused.
    window_max_requests: int = Field(default=8, ge=1)
    duration_tolerance_s: float = Field(default=300.0, ge=0)
    photo_tolerance_s: float = Field(default=900.0, ge=0)
    # Time/place typed into the lecturer's app count only when the upload arrives this close to
    # the stated time; otherwise they are shown as unverified (rules.photo_match).
    photo_app_window_s: float = Field(default=600.0, ge=0)
    photo_grace_s: float = Field(default=3600.0, ge=0)
    clip_grace_s: float = Field(default=24 * 3600.0, ge=0)
    offline_tolerance_s: float = Field(default=120.0, ge=0)
    heartbeat_timeout_s: float = Field(default=90.0, gt=0)
    max_photo_bytes: int = Field(default=15 * 1024 * 1024, gt=0)
    timetable_horizon_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    scheduler_interval_s: float = Field(default=1.0, gt=0)
    # An open/close the API accepted is sent again this often until its device answers, and
    # not at all once this old (an open or close much later would be wrong).
    command_resend_s: float = Field(default=60.0, gt=0)
    command_ttl_s: float = Field(default=15 * 60.0, gt=0)
    timezone: str = "Asia/Shanghai"
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    # A feed long-poll (GET /api/v1/feed?wait=) is held at most this long, whatever it asks
    # (less when a proxy in front closes idle requests sooner); waiters read the database again
    # this often for commits made in other processes, which wake nobody here
    # (ingest_server.feed.commits); past this many waiters a long-poll is refused with 503.
    feed_max_wait_s: float = Field(default=30.0, ge=0, le=30)
    feed_recheck_s: float = Field(default=1.0, gt=0)
    feed_max_waiters: int = Field(default=256, ge=1)
    # A roll call (POST /api/v1/devices/{id}/snapshot) holds the request this long for the
    # camera's still before answering 504 with the follow-up's address; past this many
    # requests waiting at once, across devices, one is refused with 503 (api/rollcall.py).
    snapshot_wait_s: float = Field(default=10.0, ge=0, le=60)
    snapshot_max_waiters: int = Field(default=32, ge=1)

    @field_validator("data_dir", "evidence_dir", "audit_key_file", "export_key_file", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("database_url", mode="after")
    @classmethod
    def _absolute_url(cls, value: str) -> str:
        return absolute_sqlite_url(value)

    @field_validator("shared_group", mode="after")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    def mqtt_secret(self) -> str | None:
        """The broker password: ``mqtt_password`` if set, else the first line of the file."""
        if self.mqtt_password:
            return self.mqtt_password
        if self.mqtt_password_file:
            return self.mqtt_password_file.read_text().strip() or None
        return None

    def mqtt_scheduler_secret(self) -> str | None:
        """The scheduler account's broker password, read like ``mqtt_secret``."""
        if self.mqtt_scheduler_password:
            return self.mqtt_scheduler_password
        if self.mqtt_scheduler_password_file:
            return self.mqtt_scheduler_password_file.read_text().strip() or None
        return None

    def describe(self) -> dict[str, Any]:
        """Where things live, with the database password masked: for logs and ``run``."""
        return {
            "database": re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", self.database_url),
            "evidence": str(self.evidence_dir)
            if self.evidence_store == "fs"
            else f"s3://{self.s3_bucket} ({self.s3_endpoint_url or 'AWS'}), cache"
            f" {self.evidence_dir}",
            "broker": f"{self.mqtt_host}:{self.mqtt_port} (MQTT {self.mqtt_protocol})",
            "subscription": self.shared_group or "(plain, no $share)",
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, loaded once; a FastAPI dependency that tests override."""
    return Settings()
