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

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo

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
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    password_file: CredentialPath = Path("broker-password")
    # Carrier NATs drop idle TCP flows after a few minutes: stay well under that.
    keepalive_s: int = Field(60, ge=10, le=600)
    # Long enough that acks and commands wait through a day (or two) offline.
    session_expiry_s: int = Field(172_800, ge=0)
    tls: bool = False
    ca_file: Path | None = None
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(120.0, gt=0)


class KeysConfig(Section):
    private_key_file: CredentialPath = Path("device-key.pem")


class CameraConfig(Section):
    kind: Literal["synthetic"] = "synthetic"
    width: int = Field(1280, ge=16, le=4096)
    height: int = Field(720, ge=16, le=4096)
    fps: float = Field(15.0, gt=0, le=60)


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


class HeartbeatConfig(Section):
    interval_s: float = Field(30.0, ge=5, le=3600)


class StorageConfig(Section):
    # Session recordings are kept until their windows are acknowledged or this many days pass.
    retention_days: float = Field(7.0, gt=0)
    # Below this much free space: delete recordings outside sessions, report storage_low.
    low_water_mb: int = Field(512, ge=0)
    # Below this: no recording outside sessions at all. Session evidence is never deleted.
    critical_mb: int = Field(128, ge=0)


class ModemConfig(Section):
    # Serial port of the modem's AT interface, e.g. /dev/ttyUSB2 (Quectel) or /dev/ttyUSB3
    # (SIMCom); empty when the box has no modem (wired or Wi-Fi network).
    port: str = ""
    baudrate: int = Field(115200, gt=0)
    command_timeout_s: float = Field(2.0, gt=0)


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
