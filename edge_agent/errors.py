"""The edge agent's exception tree: small, with the fields a loop top needs to report."""

from __future__ import annotations

from datetime import datetime

from common.errors import ClasscamError


class AgentError(ClasscamError):
    """Root of every error the edge agent raises on purpose."""


class CameraError(AgentError):
    """The camera is gone or cannot be opened; ``camera`` names it."""

    def __init__(self, camera: str, why: str) -> None:
        super().__init__(f"camera {camera!r}: {why}")
        self.camera = camera
        self.why = why


class SpoolError(AgentError):
    """The local spool (segment files and their index) cannot do what was asked."""


class CutError(AgentError):
    """A window that cannot be cut, e.g. because no recording covers it."""

    def __init__(self, start: datetime, end: datetime, why: str) -> None:
        super().__init__(f"cannot cut [{start.isoformat()}, {end.isoformat()}]: {why}")
        self.start = start
        self.end = end
        self.why = why
