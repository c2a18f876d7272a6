"""Whether a device counts as online now: one rule for the fleet views, the roll call and
the dashboard. Its retained status must say online, and its heartbeats must not have stopped
for longer than ``heartbeat_timeout_s`` (the status alone stays "online" through a broker
that has not yet noticed a dead link)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ingest_server.models import DeviceHealth


@dataclass(frozen=True, slots=True)
class Presence:
    """Whether a device can be asked now: its retained status says online and its heartbeats
    have not stopped for longer than the timeout (as ``GET /devices`` decides ``online``)."""

    online: bool
    status: str  # "online", "offline", or "unknown" when the device never spoke
    status_at: datetime | None
    last_heartbeat_at: datetime | None


def presence_of(health: DeviceHealth | None, now: datetime, heartbeat_timeout_s: float) -> Presence:
    """The presence ``health`` (a device's latest word, None if it never spoke) shows at
    ``now``. A device online by its status but without a heartbeat yet counts as online: it
    has just connected and beats within its interval."""
    if health is None:
        return Presence(False, "unknown", None, None)
    last = health.last_heartbeat_at
    fresh = last is None or (now - last).total_seconds() <= heartbeat_timeout_s
    return Presence(health.status == "online" and fresh, health.status, health.status_at, last)
