"""What the heartbeat reports about the box itself: disk, temperature, uptime, modem."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from common.heartbeat import GnssPosition, ModemHealth

log = logging.getLogger(__name__)
THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_temperature_c(path: Path = THERMAL) -> float | None:
    """The SoC temperature on a Pi (millidegrees in sysfs); None where there is no sensor."""
    try:
        return int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def disk_usage(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the filesystem holding ``path``."""
    usage = shutil.disk_usage(path)
    return usage.free, usage.total


def directory_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def process_uptime_s(started_mono: float) -> float:
    return max(0.0, time.monotonic() - started_mono)


def modem_health(modem: Any) -> tuple[ModemHealth | None, GnssPosition | None]:
    """Ask the modem for everything the heartbeat carries; a dead modem is reported, not fatal."""
    if modem is None:
        return None, None
    try:
        snap = modem.snapshot()
    except Exception as exc:  # the modem driver's own errors, or a port that vanished
        log.warning("modem snapshot failed: %s", exc)
        return ModemHealth(failed=["snapshot"]), None
    signal = getattr(snap, "signal", None)
    registration = getattr(snap, "registration", None)
    operator = getattr(snap, "operator", None)
    health = ModemHealth(
        model=_str(getattr(snap, "model", None)),
        rssi_dbm=getattr(signal, "rssi_dbm", None),
        rsrp_dbm=getattr(signal, "rsrp_dbm", None),
        rsrq_db=getattr(signal, "rsrq_db", None),
        sinr_db=getattr(signal, "sinr_db", None),
        registration=_str(getattr(registration, "state", registration)),
        operator=_str(getattr(operator, "name", operator)),
        access_technology=_str(getattr(operator, "access_technology", None)),
        iccid=_str(getattr(snap, "iccid", None)),
        imei=_str(getattr(snap, "imei", None)),
        failed=list(getattr(snap, "failed", []) or []),
    )
    fix = getattr(snap, "gnss", None) or getattr(snap, "gnss_fix", None)
    gnss = None
    if fix is not None and getattr(fix, "lat", None) is not None:
        gnss = GnssPosition(
            lat=fix.lat,
            lon=fix.lon,
            altitude_m=getattr(fix, "altitude_m", None),
            hdop=getattr(fix, "hdop", None),
            at=getattr(fix, "at", None),
        )
    return health, gnss


def _str(value: object) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))
