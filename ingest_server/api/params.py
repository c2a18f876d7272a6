"""Request parameters several routers share: ids in paths, the reader's language, UTC bounds."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Header, Path, Query
from pydantic import AfterValidator

from common.clock import to_utc
from ingest_server.models import ID_LENGTH

SessionId = Annotated[str, Path(min_length=1, max_length=ID_LENGTH)]
Lang = Annotated[str | None, Query(max_length=64)]
AcceptLanguage = Annotated[str | None, Header(max_length=1024)]


def _representable_utc(value: datetime | None) -> datetime | None:
    # 0001-01-01T00:00+05:00 is a valid ISO time that is not one in UTC: 422, not a 500.
    try:
        return to_utc(value) if value is not None else None
    except OverflowError as exc:
        raise ValueError("outside the range of UTC datetimes") from exc


UtcBound = Annotated[datetime | None, AfterValidator(_representable_utc)]
