"""Request parameters several routers share: ids in paths, queries and bodies, the reader's
language, UTC bounds."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Header, Query
from pydantic import AfterValidator, StringConstraints

from common.clock import to_utc
from common.topics import ID_PATTERN
from ingest_server.models import ID_LENGTH

# Every id the server keeps (institution, classroom, lecturer, class, session, device, command)
# came through ``common.schemas.SafeId`` (the setup import, the device's messages) or was made
# by the server in the same alphabet, so one that does not match is no row at all: refused as
# a validation error before it reaches the database (PostgreSQL refuses a NUL in a string with
# an error, not an empty answer).
#
# One id type for paths, queries and JSON bodies alike (FastAPI takes the constraints from the
# type wherever it stands, and the OpenAPI document shows the pattern).
Id = Annotated[
    str, StringConstraints(min_length=1, max_length=ID_LENGTH, pattern=ID_PATTERN.pattern)
]
SessionId = Id
# The largest row id (clips, photos) and feed cursor: their columns are INTEGER, 32 bits on
# PostgreSQL, which answers a larger number with an error (a 500), not with no row.
MAX_ROW_ID = 2**31 - 1

Lang = Annotated[str | None, Query(max_length=64, description="zh-CN (default) or en")]
AcceptLanguage = Annotated[str | None, Header(max_length=1024)]


def is_id(value: str) -> bool:
    """Whether ``value`` could name a row (what ``Id`` accepts): for the dashboard, whose pages
    answer a 404 page or ignore a filter rather than FastAPI's 422 JSON."""
    return ID_PATTERN.fullmatch(value) is not None


def _representable_utc(value: datetime | None) -> datetime | None:
    # 0001-01-01T00:00+05:00 is a valid ISO time that is not one in UTC: 422, not a 500.
    try:
        return to_utc(value) if value is not None else None
    except OverflowError as exc:
        raise ValueError("outside the range of UTC datetimes") from exc


UtcBound = Annotated[datetime | None, AfterValidator(_representable_utc)]
