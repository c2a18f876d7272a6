"""What the dashboard reads from its paths and GET forms: ids, and days for the pages that
filter by them."""

from __future__ import annotations

from datetime import date

from fastapi import HTTPException

from ingest_server.api.params import is_id

# The days a form may name: far wider than any deployment's records, and clear of the
# calendar's ends (9999-12-31 has no next day to end a range at; 0001-01-01 in a zone east of
# UTC is before the first UTC datetime).
DAYS = (date(1970, 1, 1), date(2999, 12, 31))


def form_day(value: str | None, bad: list[str]) -> date | None:
    """A day (``YYYY-MM-DD``) from a form field, or None when empty; an unreadable day, or one
    outside ``DAYS``, is noted in ``bad`` (the page says it was ignored) and read as empty."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value.strip()[:10])
    except ValueError:
        day = None
    if day is None or not DAYS[0] <= day <= DAYS[1]:
        bad.append(value[:40])
        return None
    return day


def path_id(value: str) -> str:
    """An id (session, device, command) from a page's path, as the API's ``params.Id`` takes
    it; one no row can have is no such page: a 404 page, never the query (PostgreSQL answers a
    NUL in a string with an error, not an empty result)."""
    if not is_id(value):
        raise HTTPException(404, "no such page")
    return value


def filter_id(value: str | None) -> str | None:
    """An id to filter by, from a form field already trimmed (None: no filter). One no row can
    have is kept as ``""``, which no row has either: the list is empty, as it should be, and
    the text never reaches the database."""
    return value if value is None or is_id(value) else ""
