"""What the heartbeat reports about the box itself: disk and SoC temperature."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

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
