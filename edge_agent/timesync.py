"""The device's clock offset from the server, so server-UTC windows map onto the spool.

Every ack and command carries the server's time. A message arrives after it was sent, so each
sample ``device_now - server_time`` overstates the offset by the transit delay; the smallest
recent sample is the best estimate (the classic NTP-style filter). Modem network time can
seed it before the first server message arrives.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime


class ClockOffset:
    """Device clock minus server clock, in seconds, estimated from timestamped messages."""

    def __init__(self, window: int = 16) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self.source: str | None = None

    def observe(self, server_time: datetime, device_time: datetime, source: str = "server") -> None:
        """Record that the server said ``server_time`` when the device read ``device_time``."""
        self._samples.append((device_time - server_time).total_seconds())
        self.source = source

    @property
    def seconds(self) -> float | None:
        """The estimate, or None before any sample."""
        if not self._samples:
            return None
        return min(self._samples)

    def or_zero(self) -> float:
        return self.seconds or 0.0
