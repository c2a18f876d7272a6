"""Rendering a dashboard page: one Jinja2 environment, the page's language and time zone.

Pages are rendered on the server (no JavaScript build step): every template extends
``base.html`` and gets ``t`` (the words in the request's language), ``lang``, ``tz`` (the
deployment's zone, ``Settings.timezone``), ``caller`` and the ``localtime`` filter.
Autoescaping is on for every template: names, reasons and ids come from imported files and
devices, and must never become markup.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2.runtime import Context

from common.clock import to_utc
from ingest_server.auth import Caller
from ingest_server.dashboard import i18n
from ingest_server.rules.reasons import DEFAULT_TIMEZONE, Lang

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_TIME_FORMAT = "%Y-%m-%d %H:%M"


def zone(name: str) -> tzinfo:
    """The deployment's zone by name; Asia/Shanghai if the name is unknown (a page is still
    readable, and the footer names the zone it used)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return DEFAULT_TIMEZONE


def parse_time(value: str | datetime | None) -> datetime | None:
    """A UTC datetime from an ISO-8601 string (as evidence.py gives them) or a datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return to_utc(value)
    return to_utc(datetime.fromisoformat(value))


def local_time(value: str | datetime | None, tz: tzinfo, fmt: str = DEFAULT_TIME_FORMAT) -> str:
    """``value`` as wall-clock time in ``tz``; an empty string for no time."""
    moment = parse_time(value)
    return "" if moment is None else moment.astimezone(tz).strftime(fmt)


@pass_context
def _localtime_filter(
    context: Context, value: str | datetime | None, fmt: str = DEFAULT_TIME_FORMAT
) -> str:
    return local_time(value, context["tz"], fmt)


def _number(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}"


environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters["localtime"] = _localtime_filter
environment.filters["number"] = _number


def page_url(request: Request, **changes: str | None) -> str:
    """This page's path and query with ``changes`` applied (None removes a parameter)."""
    params = dict(request.query_params)
    for name, value in changes.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = value
    query = urlencode(params)
    return request.url.path + (f"?{query}" if query else "")


def render(
    request: Request,
    template: str,
    values: dict[str, Any] | None = None,
    *,
    caller: Caller | None = None,
    status_code: int = 200,
    tz_name: str | None = None,
) -> HTMLResponse:
    """Render ``template`` for ``request`` in its language (a ``?lang=`` choice is kept in a
    cookie for the pages that follow)."""
    lang: Lang = i18n.pick(request)
    settings_zone = tz_name or request.app.state.context.settings.timezone
    tz = zone(settings_zone)
    other: Lang = "en" if lang == "zh-CN" else "zh-CN"
    body = environment.get_template(template).render(
        request=request,
        t=i18n.Translator(lang),
        lang=lang,
        tz=tz,
        tz_name=str(getattr(tz, "key", settings_zone)),
        caller=caller,
        path=request.url.path,
        switch_language_url=page_url(request, **{i18n.LANG_QUERY: other}),
        page_url=lambda **changes: page_url(request, **changes),
        **(values or {}),
    )
    response = HTMLResponse(body, status_code=status_code)
    # Pages show evidence: no shared cache may keep them, and no other site may frame them.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; media-src 'self';"
        " style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none';"
        " form-action 'self'; base-uri 'none'"
    )
    if request.query_params.get(i18n.LANG_QUERY) == lang:
        response.set_cookie(
            i18n.LANG_COOKIE,
            lang,
            max_age=365 * 24 * 3600,
            path="/ui",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return response
