"""What the dashboard reads from its GET forms, shared by the pages that filter by day."""

from __future__ import annotations

from datetime import date

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
