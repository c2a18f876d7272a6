"""The statistics page (``/ui/statistics``): sessions per month stacked by verdict, verified
trainee-hours per month, and the same counts per institution and per classroom.

The figures are ``evidence.statistics`` within the caller's session scope, exactly what
``GET /api/v1/statistics`` answers (counts, not evidence: not audited, as there). The charts are
inline SVG drawn from ``charts.stacked_bars`` on the server: no script, no chart library.
Months and the date range are those of the deployment's zone; by default the twelve months up
to the current one, whole. Each row links to the review queue showing its sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from ingest_server import audit, evidence
from ingest_server.api.deps import ApiContext, get_context, get_db, session_scope
from ingest_server.auth import Caller
from ingest_server.dashboard import charts, i18n, templating
from ingest_server.dashboard.auth import REVIEWERS, page_require
from ingest_server.dashboard.forms import form_day
from ingest_server.rules.reasons import Lang

router = APIRouter()

DEFAULT_MONTHS = 12
# The widest range a page counts over: the query reads every session in it.
MAX_DAYS = 5 * 366
SERIES = ("verified", "rejected", "pending")

STRINGS: dict[str, dict[Lang, str]] = {
    "stats_title": {"zh-CN": "统计", "en": "Statistics"},
    "stats_range": {"zh-CN": "统计范围：{start} 至 {end}", "en": "From {start} to {end}"},
    "stats_range_capped": {
        "zh-CN": "范围过大，已缩短为 {days} 天。",
        "en": "The range was too long and is cut to {days} days.",
    },
    "stats_total": {
        "zh-CN": "共 {sessions} 节课：已核验 {verified}，未通过 {rejected}，待定 {pending}；"
        "已核验培训学时 {hours} 人·小时。",
        "en": "{sessions} sessions: {verified} verified, {rejected} rejected, {pending} pending;"
        " {hours} verified trainee-hours.",
    },
    "stats_sessions_chart": {"zh-CN": "每月课程数（按核验结果）", "en": "Sessions per month"},
    "stats_hours_chart": {
        "zh-CN": "每月已核验培训学时（人·小时）",
        "en": "Verified trainee-hours per month",
    },
    "stats_by_month": {"zh-CN": "按月", "en": "By month"},
    "stats_by_institution": {"zh-CN": "按培训机构", "en": "By institution"},
    "stats_by_classroom": {"zh-CN": "按教室", "en": "By classroom"},
    "stats_col_month": {"zh-CN": "月份", "en": "Month"},
    "stats_col_name": {"zh-CN": "名称", "en": "Name"},
    "stats_col_institution": {"zh-CN": "培训机构", "en": "Institution"},
    "stats_col_sessions": {"zh-CN": "课程数", "en": "Sessions"},
    "stats_col_hours": {"zh-CN": "已核验学时（人·小时）", "en": "Verified trainee-hours"},
    "stats_col_share": {"zh-CN": "核验通过率", "en": "Verified share"},
    "stats_empty": {"zh-CN": "此范围内没有课程。", "en": "No session in this range."},
    "stats_chart_label": {
        "zh-CN": "{month}：共 {total}",
        "en": "{month}: {total} in all",
    },
}
for _key in STRINGS:
    assert _key not in i18n.STRINGS or i18n.STRINGS[_key] == STRINGS[_key], _key
i18n.STRINGS.update(STRINGS)


@dataclass(frozen=True)
class StatsRange:
    """The days counted (local, both included), as bounds in UTC for the query."""

    first: date
    last: date
    start: datetime
    end: datetime
    capped: bool
    bad: list[str]


def read_range(request: Request, tz: tzinfo, now: datetime) -> StatsRange:
    """``from``/``to`` days in the deployment's zone; by default the twelve months up to the
    current one, whole. A reversed range is put the right way round, and one longer
    than ``MAX_DAYS`` is cut at its start."""
    bad: list[str] = []
    today = now.astimezone(tz).date()
    default_first = date(today.year, today.month, 1)
    # The whole current month: its sessions still to come count as pending.
    month_end = date(today.year + (today.month == 12), today.month % 12 + 1, 1) - timedelta(1)
    last = form_day(request.query_params.get("to"), bad) or month_end
    for _ in range(DEFAULT_MONTHS - 1):
        default_first = date(
            default_first.year - (default_first.month == 1), (default_first.month - 2) % 12 + 1, 1
        )
    first = form_day(request.query_params.get("from"), bad) or default_first
    if first > last:
        first, last = last, first
    capped = (last - first).days + 1 > MAX_DAYS
    if capped:
        first = last - timedelta(days=MAX_DAYS - 1)
    start = datetime.combine(first, time(), tz)
    end = datetime.combine(last + timedelta(days=1), time(), tz)
    return StatsRange(first, last, start, end, capped, bad)


def queue_link(span: StatsRange, **narrowed: str) -> str:
    """The review queue showing the sessions behind a row: the page's days (a month's row: that
    month's days within them) and the row's institution or classroom."""
    first, last = span.first, span.last
    month = narrowed.pop("month", None)
    if month:
        year, number = (int(part) for part in month.split("-"))
        month_first = date(year, number, 1)
        month_last = date(year + (number == 12), number % 12 + 1, 1) - timedelta(1)
        first, last = max(first, month_first), min(last, month_last)
    query = {"from": first.isoformat(), "to": last.isoformat(), **narrowed}
    return "/ui/queue?" + urlencode(query)


def verified_share(tally: dict[str, Any]) -> float | None:
    """Verified sessions among those decided (verified or rejected), or None if none is."""
    decided = tally["verified"] + tally["rejected"]
    return tally["verified"] / decided if decided else None


@router.get("/ui/statistics")
def statistics_page(
    request: Request,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Caller, Depends(page_require(*REVIEWERS))],
) -> Response:
    """Counts by month, institution and classroom over the chosen days, with two charts."""
    tz = templating.zone(context.settings.timezone)
    span = read_range(request, tz, context.clock.now())
    stats = evidence.statistics(db, session_scope(caller), start=span.start, end=span.end, tz=tz)
    db.close()
    audit.record_overview(
        context.session_factory,
        audit.api_actor(caller.role, caller.name, caller.token_id),
        "GET /ui/statistics",
        {"query": {"start": span.start, "end": span.end}},
    )
    months = stats["by_month"]
    return templating.render(
        request,
        "statistics.html",
        {
            "stats": stats,
            "span": span,
            "max_days": MAX_DAYS,
            "series": SERIES,
            "sessions_chart": charts.stacked_bars(months, "month", SERIES, whole=True),
            "hours_chart": charts.stacked_bars(months, "month", ("verified_trainee_hours",)),
            "share": verified_share,
            "institution_names": {r["id"]: r["name"] for r in stats["by_institution"]},
            "queue_link": lambda **narrowed: queue_link(span, **narrowed),
        },
        caller=caller,
    )
