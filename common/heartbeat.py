"""The device heartbeat (DESIGN.md §2): health every 30 s, small enough for a thin 4G plan."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from common.schemas import MAX_CLOCK_OFFSET_S, Message, SafeId

# No float a device sends may be NaN or infinite (JSON has neither; Python's parser takes them):
# one reaching date arithmetic raised out of the handler and stalled the ingest worker.
_FINITE = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModemHealth(BaseModel):
    model_config = _FINITE
    model: str | None = None
    rssi_dbm: int | None = None
    rsrp_dbm: int | None = None
    rsrq_db: float | None = None
    sinr_db: float | None = None
    registration: str | None = None
    operator: str | None = None
    access_technology: str | None = None
    iccid: str | None = None
    imei: str | None = None
    failed: list[str] = Field(default_factory=list)


class GnssPosition(BaseModel):
    """A GNSS fix, WGS-84 as every GNSS receiver reports."""

    model_config = _FINITE
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    datum: str = "wgs84"
    altitude_m: float | None = None
    hdop: float | None = None
    at: AwareDatetime | None = None


class Heartbeat(Message):
    model_config = _FINITE
    device_id: SafeId
    at: AwareDatetime  # the device clock, so the server sees skew
    seq: int = Field(ge=0)
    uptime_s: float = Field(ge=0)
    firmware: str
    recording: bool
    session_id: SafeId | None = None
    spool_bytes: int = Field(ge=0)
    outbox_pending: int = Field(ge=0)
    # Clips whose attempt budget is spent: kept, tried slowly (edge_agent.outbox).
    outbox_parked: int = Field(default=0, ge=0)
    disk_free_bytes: int = Field(ge=0)
    disk_total_bytes: int = Field(ge=0)
    storage_low: bool = False
    cpu_temp_c: float | None = None
    # Device minus server clock, as estimated; bounded like an event's (it moves presence).
    clock_offset_s: float | None = Field(
        default=None, ge=-MAX_CLOCK_OFFSET_S, le=MAX_CLOCK_OFFSET_S
    )
    clock_source: str | None = None  # what the estimate rests on: system, server, modem
    clock_synced: bool | None = None  # the kernel's word on the system clock (NTP/chrony)
    bytes_sent_today: int = Field(ge=0)
    bytes_sent_month: int = Field(ge=0)
    modem: ModemHealth | None = None
    gnss: GnssPosition | None = None
