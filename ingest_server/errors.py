"""The server's exception tree: refusals carry their protocol reason, store errors their path.

Refusals are raised deep inside the processor and caught once, at the top of
``IngestProcessor.handle``, which turns them into an ack, a ``rejections`` row, a log line and a
counter (STYLE.md: caught at loop tops only).
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from common.errors import ClasscamError
from common.schemas import RejectReason


class IngestError(ClasscamError):
    """Root of the errors the ingest server raises on purpose."""


class Refusal(IngestError):
    """A message the server will not accept, with the reason the device is told."""

    def __init__(
        self, reason: RejectReason, upload_id: str | None, detail: str, device_id: str | None = None
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.upload_id = upload_id
        self.detail = detail
        self.device_id = device_id


class UploadRejected(Refusal):
    """The upload (or this init) will never be accepted: the device is told ``rejected``."""


class ChunkRefused(Refusal):
    """One chunk (or the assembled file) was bad; the upload goes on and the device is told
    ``missing`` with the ranges to send again."""


class StoreError(IngestError):
    """The evidence store could not do what was asked (disk full, permissions…)."""


class StoreConflict(StoreError):
    """A different file already sits where a clip should go: evidence is never overwritten."""

    def __init__(self, path: str) -> None:
        super().__init__(f"a different file already exists at {path}")
        self.path = path


# What may pass if tried again: the database or the evidence store away or busy. Anything else
# a message raises is the message's (or a bug's): it is dead-lettered on the first attempt.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (DBAPIError, PoolTimeout, StoreError, OSError)
MAX_ERROR_TEXT = 2000  # of a dead letter's error


def error_text(exc: BaseException) -> str:
    """What a dead letter says of the error that stopped it."""
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_TEXT]
