"""The fleet page (``/ui/fleet``): every camera the reader may see, online or not, with what its
last heartbeat said: signal, disk, clock skew, recording, and when it was last heard.

The rows are ``evidence.fleet`` within the caller's device scope (``api.deps.device_scope``),
exactly what ``GET /api/v1/devices`` answers: an institution sees the cameras of its own
classrooms, admins and supervisors all of them, a lecturer none (403). The page adds only how
to read the figures (a signal's strength, a disk running low, a skew the verdicts would flag),
and a roll call button beside each camera (``dashboard.rollcall``); times are shown in the
deployment's zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from ingest_server import audit, evidence
from ingest_server.api.deps import ApiContext, device_scope, get_context, get_db
from ingest_server.auth import Caller
from ingest_server.dashboard import i18n, templating
from ingest_server.dashboard.auth import REVIEWERS, page_require
from ingest_server.rules.reasons import Lang
from ingest_server.rules.verdict import VerdictPolicy

router = APIRouter()

# LTE reference signal received power (dBm) and, without it, RSSI: the usual bands of a
# usable, a marginal and a failing link for clip uploads.
RSRP_GOOD, RSRP_FAIR = -95.0, -110.0
RSSI_GOOD, RSSI_FAIR = -75.0, -90.0
# Less free space than this share of the card is worth a look before the spool fills.
DISK_LOW_SHARE = 0.10
# A skew the verdicts would show (``device_clock_skewed``) is flagged here too.
SKEW_WARNING_S = VerdictPolicy().skew_warning_s

STRINGS: dict[str, dict[Lang, str]] = {
    "fleet_title": {"zh-CN": "设备状态", "en": "Fleet"},
    "fleet_summary": {
        "zh-CN": "共 {total} 台摄像设备，{online} 台在线。",
        "en": "{total} cameras, {online} online.",
    },
    "fleet_empty": {"zh-CN": "没有可查看的设备。", "en": "No camera to show."},
    "fleet_col_device": {"zh-CN": "设备", "en": "Camera"},
    "fleet_col_classroom": {"zh-CN": "教室", "en": "Classroom"},
    "fleet_col_status": {"zh-CN": "状态", "en": "Status"},
    "fleet_col_heartbeat": {"zh-CN": "最后心跳", "en": "Last heartbeat"},
    "fleet_col_signal": {"zh-CN": "信号", "en": "Signal"},
    "fleet_col_disk": {"zh-CN": "存储空间", "en": "Disk"},
    "fleet_col_skew": {"zh-CN": "时钟偏差", "en": "Clock skew"},
    "fleet_col_recording": {"zh-CN": "录像", "en": "Recording"},
    "fleet_online": {"zh-CN": "在线", "en": "Online"},
    "fleet_offline": {"zh-CN": "离线", "en": "Offline"},
    "fleet_disabled": {"zh-CN": "已停用", "en": "disabled"},
    "fleet_never": {"zh-CN": "从未收到", "en": "never"},
    "fleet_ago_s": {"zh-CN": "{value} 秒前", "en": "{value} s ago"},
    "fleet_ago_min": {"zh-CN": "{value} 分钟前", "en": "{value} min ago"},
    "fleet_ago_h": {"zh-CN": "{value} 小时前", "en": "{value} h ago"},
    "fleet_ago_d": {"zh-CN": "{value} 天前", "en": "{value} days ago"},
    "fleet_status_since": {"zh-CN": "自 {at}", "en": "since {at}"},
    "signal_good": {"zh-CN": "良好", "en": "good"},
    "signal_fair": {"zh-CN": "一般", "en": "fair"},
    "signal_weak": {"zh-CN": "弱", "en": "weak"},
    "signal_unknown": {"zh-CN": "未知", "en": "unknown"},
    "disk_free": {
        "zh-CN": "剩余 {free} GB / 共 {total} GB",
        "en": "{free} GB free of {total} GB",
    },
    "disk_low": {"zh-CN": "空间不足", "en": "low"},
    "skew_value": {"zh-CN": "{value} 秒", "en": "{value} s"},
    "skew_large": {"zh-CN": "偏差过大", "en": "large"},
    "skew_source": {"zh-CN": "来源：{source}", "en": "from {source}"},
    "recording_yes": {"zh-CN": "正在录像", "en": "recording"},
    "recording_no": {"zh-CN": "未录像", "en": "idle"},
    "fleet_firmware": {"zh-CN": "固件 {value}", "en": "firmware {value}"},
    "unknown": {"zh-CN": "未知", "en": "unknown"},
}
for _key in STRINGS:
    assert _key not in i18n.STRINGS or i18n.STRINGS[_key] == STRINGS[_key], _key
i18n.STRINGS.update(STRINGS)


@dataclass(frozen=True)
class CameraRow:
    """One camera as the page shows it."""

    device_id: str
    enabled: bool
    classroom: str | None
    online: bool
    status_at: str | None
    last_heartbeat_at: str | None
    heard_ago: tuple[str, int] | None  # (unit key, value)
    signal_dbm: float | None
    signal_kind: str | None  # "RSRP" or "RSSI"
    signal_level: str  # good, fair, weak, unknown
    operator: str | None
    disk_free_gb: float | None
    disk_total_gb: float | None
    disk_low: bool
    skew_s: float | None
    skew_large: bool
    clock_source: str | None
    recording: bool | None
    session_id: str | None
    firmware: str | None


def signal_level(rsrp: float | None, rssi: float | None) -> tuple[str, float | None, str | None]:
    """How strong the link is: (good/fair/weak/unknown, the figure used, its name)."""
    if rsrp is not None:
        level = "good" if rsrp >= RSRP_GOOD else "fair" if rsrp >= RSRP_FAIR else "weak"
        return level, rsrp, "RSRP"
    if rssi is not None:
        level = "good" if rssi >= RSSI_GOOD else "fair" if rssi >= RSSI_FAIR else "weak"
        return level, rssi, "RSSI"
    return "unknown", None, None


def heard_ago(age_s: float | None) -> tuple[str, int] | None:
    """How long ago, in the largest unit that keeps it readable."""
    if age_s is None:
        return None
    age = max(age_s, 0.0)
    for key, unit, below in (
        ("fleet_ago_s", 1, 120),
        ("fleet_ago_min", 60, 120 * 60),
        ("fleet_ago_h", 3600, 48 * 3600),
    ):
        if age < below:
            return key, int(age // unit)
    return "fleet_ago_d", int(age // 86400)


def _gb(value: float | None) -> float | None:
    return None if value is None else value / 1e9


def camera_row(device: dict[str, Any]) -> CameraRow:
    """A row of ``evidence.fleet`` read for people."""
    signal = device.get("signal") or {}
    level, dbm, kind = signal_level(signal.get("rsrp_dbm"), signal.get("rssi_dbm"))
    disk = device.get("disk") or {}
    free, total = disk.get("free_bytes"), disk.get("total_bytes")
    low = bool(disk.get("storage_low")) or bool(
        free is not None and total and free / total < DISK_LOW_SHARE
    )
    skew = device.get("clock_skew_s")
    room = device.get("classroom") or {}
    return CameraRow(
        device_id=device["device_id"],
        enabled=bool(device.get("enabled", True)),
        classroom=room.get("name"),
        online=bool(device.get("online")),
        status_at=device.get("status_at"),
        last_heartbeat_at=device.get("last_heartbeat_at"),
        heard_ago=heard_ago(device.get("heartbeat_age_s")),
        signal_dbm=dbm,
        signal_kind=kind,
        signal_level=level,
        operator=signal.get("operator"),
        disk_free_gb=_gb(free),
        disk_total_gb=_gb(total),
        disk_low=low,
        skew_s=skew,
        skew_large=skew is not None and abs(skew) > SKEW_WARNING_S,
        clock_source=device.get("clock_source"),
        recording=device.get("recording"),
        session_id=device.get("session_id"),
        firmware=device.get("firmware"),
    )


@router.get("/ui/fleet")
def fleet_page(
    request: Request,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Caller, Depends(page_require(*REVIEWERS))],
) -> Response:
    """The cameras the reader may see, offline ones first (they need someone)."""
    now: datetime = context.clock.now()
    devices = evidence.fleet(
        db,
        device_scope(caller),
        now=now,
        heartbeat_timeout_s=context.settings.heartbeat_timeout_s,
    )
    db.close()
    audit.record_overview(
        context.session_factory,
        audit.api_actor(caller.role, caller.name, caller.token_id),
        "GET /ui/fleet",
        {"shown": len(devices)},
    )
    rows = sorted((camera_row(d) for d in devices), key=lambda r: (r.online, r.device_id))
    return templating.render(
        request,
        "fleet.html",
        {"rows": rows, "online": sum(r.online for r in rows), "now": now},
        caller=caller,
    )
