"""Does a clip prove a window? (DESIGN.md §2, trust model): a pure rule over plain facts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from common.clock import to_utc


@dataclass(frozen=True, slots=True)
class ClipFacts:
    """What a clip's (verified) manifest says about it.

    ``cut_start``/``cut_end`` are in the device's clock; ``clock_offset_s`` is the device
    clock minus the server clock as the device measured it (``Manifest.clock_offset_s``).
    """

    upload_id: str
    device_id: str
    cut_start: datetime
    cut_end: datetime
    clock_offset_s: float = 0.0
    session_id: str | None = None
    requested_start: datetime | None = None
    requested_end: datetime | None = None


def clip_server_bounds(clip: ClipFacts) -> tuple[datetime, datetime]:
    """The clip's cut bounds in server time (device time minus the stated offset)."""
    offset = timedelta(seconds=clip.clock_offset_s)
    return to_utc(clip.cut_start) - offset, to_utc(clip.cut_end) - offset
