"""The agent's one typed config: a TOML file validated by pydantic, loaded once at start.

Secrets (broker password, device key) are never in the TOML: it names files, which systemd
hands the service as credentials (``$CREDENTIALS_DIRECTORY``). Every field is documented in
``firmware_config/agent.example.toml``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from common.errors import ClasscamError
from common.schemas import MAX_CHUNK_SIZE
from common.topics import validate_id


class ConfigError(ClasscamError):
    """A config file that cannot be read or does not validate; names the field."""

    def __init__(self, path: Path, field: str, message: str) -> None:
        super().__init__(f"{path}: {field}: {message}")
        self.path = path
        self.field = field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _credential_path(value: Path, info: ValidationInfo) -> Path:
    """A relative secret path is looked up in systemd's credentials directory when the service
    has one, else beside the config file (as ``classcam-agent provision`` lays them out)."""
    if value.is_absolute():
        return value
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        return Path(creds) / value
    base = (info.context or {}).get("base_dir")
    return Path(base) / value if base else value


CredentialPath = Annotated[Path, AfterValidator(_credential_path)]


class BrokerConfig(Section):
    host: str = "127.0.0.1"
    # The broker's TLS listener (firmware_config/mosquitto.conf.template).
    port: int = Field(8883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    password_file: CredentialPath = Path("broker-password")
    # Carrier NATs drop idle TCP flows after a few minutes: stay well under that.
    keepalive_s: int = Field(60, ge=10, le=600)
    # Long enough that acks and commands wait through a day (or two) offline.
    session_expiry_s: int = Field(172_800, ge=0)
    # TLS on: the broker's certificate must chain to ca_file (unset: the system's CAs) and
    # name ``host``; paho refuses anything else before a password is sent.
    tls: bool = True
    ca_file: CredentialPath | None = None
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(120.0, gt=0)


class KeysConfig(Section):
    private_key_file: CredentialPath = Path("device-key.pem")


class CameraConfig(Section):
    # Which backend (edge_agent/cameras): the fields below that a kind does not use must be unset.
    kind: Literal["synthetic", "v4l2", "rtsp", "picamera2"] = "synthetic"
    # Requested picture; an RTSP camera sends what it is set to in its own web UI.
    width: int = Field(1280, ge=16, le=4096)
    height: int = Field(720, ge=16, le=4096)
    fps: float = Field(15.0, gt=0, le=60)
    # v4l2: the device node (required); picamera2: the camera number, "0" when unset.
    device: str | None = None
    # rtsp: rtsp://user@host:554/path (required). The password goes in password_file.
    url: str | None = None
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    password_file: CredentialPath | None = None

    @field_validator("device")
    @classmethod
    def _device_fits_kind(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind == "v4l2" and not value:
            raise ValueError("kind v4l2 needs a device, e.g. /dev/video0")
        if kind == "picamera2" and value is not None and not value.isdigit():
            raise ValueError('for picamera2, device is the camera number, e.g. "0"')
        if kind in ("synthetic", "rtsp") and value is not None:
            raise ValueError(f"kind {kind} takes no device")
        return value

    @field_validator("url")
    @classmethod
    def _url_fits_kind(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind != "rtsp":
            if value is not None:
                raise ValueError(f"kind {kind} takes no url")
            return value
        if not value:
            raise ValueError("kind rtsp needs a url, e.g. rtsp://admin@192.168.1.64:554/stream1")
        parts = urlsplit(value)
        if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
            raise ValueError("must be rtsp://host[:port]/path")
        if parts.password is not None:
            # Secrets never live in the TOML (it is world-readable to the service group).
            raise ValueError("put the camera password in password_file, not in the url")
        return value

    @field_validator("password_file")
    @classmethod
    def _password_fits_kind(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("kind") != "rtsp":
            raise ValueError("only kind rtsp takes a password_file")
        if value is not None and not urlsplit(info.data.get("url") or "").username:
            raise ValueError("a password_file needs a user in the url (rtsp://user@host/...)")
        return value


class RecordingConfig(Section):
    segment_seconds: float = Field(2.0, gt=0, le=60)
    # 1 s keyframes make cut bounds exact to a second without edit lists (DESIGN.md §4).
    keyframe_interval_s: float = Field(1.0, gt=0, le=10)
    bitrate: int = Field(1_000_000, ge=100_000, le=20_000_000)
    preset: str = "ultrafast"


class UploadConfig(Section):
    chunk_size: int = Field(65_536, ge=1024, le=MAX_CHUNK_SIZE)
    # 0 means no limit. On a thin 4G link this keeps room for heartbeats and commands.
    rate_limit_bytes_per_s: int = Field(0, ge=0)
    # QoS 1 chunks in flight before waiting for the broker's PUBACK.
    window: int = Field(16, ge=1, le=1000)
    ack_timeout_s: float = Field(20.0, gt=0)
    # A refusal that can pass (device not registered yet, server busy) is tried again after a
    # jittered wait that doubles from retry_min_s up to retry_max_s.
    retry_min_s: float = Field(30.0, gt=0)
    retry_max_s: float = Field(3600.0, gt=0)
    # Attempts a clip gets (any that ends without complete: no answer, a refusal that can
    # pass, a fin that makes no progress) before it is parked: kept, tried every
    # parked_retry_s, and reported in the heartbeat, so one clip never holds up the rest.
    max_attempts: int = Field(10, ge=1)
    parked_retry_s: float = Field(6 * 3600.0, gt=0)


class HeartbeatConfig(Section):
    interval_s: float = Field(30.0, ge=1, le=3600)


class StorageConfig(Section):
    # Session recordings are kept until their windows are acknowledged or this many days pass.
    retention_days: float = Field(7.0, gt=0)
    # Below this much free space: delete recordings outside sessions, report storage_low.
    low_water_mb: int = Field(512, ge=0)
    # Below this: no recording outside sessions at all. Session evidence is never deleted.
    critical_mb: int = Field(128, ge=0)


class ModemConfig(Section):
    # The modem's AT port; prefer the /dev/serial/by-id/…-if02-port0 link, which survives a
    # modem reset (ttyUSB2 on both EC25 and SIM7600). Empty when the box has no modem.
    port: str = ""
    # "quectel", "simcom" or "generic"; unset: detected with ATI.
    family: Literal["quectel", "simcom", "generic"] | None = None
    baudrate: int = Field(115200, gt=0)
    command_timeout_s: float = Field(2.0, gt=0)


class ClockConfig(Section):
    # A new estimate of the clock offset further than this from the current one is refused
    # until two independent sources (modem time, server answers) agree on it.
    max_jump_s: float = Field(300.0, gt=0)


class AgentConfig(Section):
    device_id: Annotated[str, AfterValidator(lambda v: validate_id(v, "device_id"))]
    state_dir: Path = Path("/var/lib/classcam")
    broker: BrokerConfig = Field(default_factory=lambda: BrokerConfig.model_validate({}))
    keys: KeysConfig = Field(default_factory=lambda: KeysConfig.model_validate({}))
    camera: CameraConfig = Field(default_factory=lambda: CameraConfig.model_validate({}))
    recording: RecordingConfig = Field(default_factory=lambda: RecordingConfig.model_validate({}))
    upload: UploadConfig = Field(default_factory=lambda: UploadConfig.model_validate({}))
    heartbeat: HeartbeatConfig = Field(default_factory=lambda: HeartbeatConfig.model_validate({}))
    storage: StorageConfig = Field(default_factory=lambda: StorageConfig.model_validate({}))
    modem: ModemConfig = Field(default_factory=lambda: ModemConfig.model_validate({}))
    clock: ClockConfig = Field(default_factory=lambda: ClockConfig.model_validate({}))

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.state_dir / "outbox"

    def broker_password(self) -> str:
        """Read the broker password from its credential file."""
        try:
            return self.broker.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(Path("<config>"), "broker.password_file", str(exc)) from exc


def load_config(path: Path) -> AgentConfig:
    """Read and validate ``path``; ``ConfigError`` names the offending field."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(path, "<file>", str(exc)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "<toml>", str(exc)) from exc
    # Absent sections are validated too, so their relative secret paths resolve the same way.
    for section in (
        "broker",
        "keys",
        "camera",
        "recording",
        "upload",
        "heartbeat",
        "storage",
        "modem",
    ):
        raw.setdefault(section, {})
    try:
        return AgentConfig.model_validate(raw, context={"base_dir": path.parent})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ConfigError(path, field, first["msg"]) from exc
