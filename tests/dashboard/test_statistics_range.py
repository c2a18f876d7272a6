"""The statistics page's range from its form, as a person or a crafted link may write it: days
of the deployment's zone, reversed ranges put right, over-long ones cut, unreadable or
out-of-calendar days shown and ignored, never a server error."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conftest import Dashboard


@pytest.fixture
def admin(dashboard: Dashboard) -> Iterator[httpx.Client]:
    cookies = {"classcam_token": dashboard.token("admin")}
    with httpx.Client(base_url=dashboard.url, cookies=cookies, timeout=20) as client:
        yield client


@pytest.mark.parametrize(
    ("query", "sessions", "notice"),
    [
        ("", 9, None),
        ("from=2026-10-01&to=2026-10-31", 3, None),
        ("from=2026-10-31&to=2026-10-01", 3, None),  # reversed: the same October
        # A session at 06:00 UTC on 15 Oct is 14:00 that day in Shanghai: in, by local days.
        ("from=2026-10-15&to=2026-10-15", 1, None),
        ("from=0001-01-01&to=9999-12-31", 9, "filter_bad_date"),
        ("from=not-a-day", 9, "filter_bad_date"),
        ("from=1970-01-01&to=2026-11-30", 9, "stats_range_capped"),
        ("from=" + "9" * 5000, 9, "filter_bad_date"),
    ],
)
def test_ranges_count_the_right_sessions_and_never_fail(
    admin: httpx.Client, query: str, sessions: int, notice: str | None
) -> None:
    answer = admin.get(f"/ui/statistics?{query}&lang=en")
    assert answer.status_code == 200, answer.text[:300]
    assert f'data-testid="stats-total">{sessions} sessions' in answer.text
    if notice == "filter_bad_date":
        assert "A date is written year-month-day" in answer.text
    elif notice == "stats_range_capped":
        assert "The range was too long" in answer.text
    else:
        assert 'class="error"' not in answer.text
