"""The dashboard: server-rendered pages for the people who review sessions (issue 10).

No JavaScript build step: Jinja2 templates (``templates/``), one stylesheet (``static/``),
diagrams as inline SVG. Pages live under ``/ui`` (``/`` leads to the review queue) and are left
out of the OpenAPI document, which describes the machine API under ``/api`` only.

``router`` carries every page; ``install(app)`` adds it to an application together with the
handlers that turn a missing login into a redirect and a refusal into a page in the reader's
language (JSON errors would mean nothing to a person).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest_server.dashboard import (
    auth,
    fleet,
    i18n,
    media,
    queue,
    rollcall,
    session,
    statistics,
    templating,
)

STATIC = Path(__file__).parent / "static"
# Served by name from this fixed set: a request can never name a path outside the folder.
STATIC_FILES = {path.name: path for path in STATIC.iterdir() if path.is_file()}
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}

# The dashboard's POST forms come with the session cookie, not a bearer header: the API's body
# guard lets them in up to this size (a token and a few fields) and their routes authenticate.
FORM_PATHS = re.compile(r"/ui/.*")
MAX_FORM_BYTES = 4096

router = APIRouter(include_in_schema=False)
router.include_router(auth.router)
router.include_router(queue.router)
router.include_router(session.router)
router.include_router(media.router)
router.include_router(fleet.router)
router.include_router(statistics.router)
router.include_router(rollcall.router)


@router.get("/")
def home() -> RedirectResponse:
    """The root leads people to the review queue (or the login form on the way)."""
    return RedirectResponse(auth.HOME_PATH, status_code=303)


@router.get("/ui")
@router.get("/ui/")
def ui_home() -> RedirectResponse:
    return RedirectResponse(auth.HOME_PATH, status_code=303)


@router.get("/ui/static/{name}")
def static_file(name: str) -> Response:
    """The dashboard's stylesheet and other small files, cacheable for a day."""
    path = STATIC_FILES.get(name)
    if path is None:
        raise HTTPException(404, f"no static file {name}")
    return FileResponse(
        path,
        media_type=STATIC_TYPES.get(path.suffix, "application/octet-stream"),
        headers={"Cache-Control": "public, max-age=86400"},
    )


def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, auth.LoginRequired)
    return auth.login_redirect(exc.next_url)


async def _page_refusal(request: Request, exc: Exception) -> Response:
    """A refusal under ``/ui`` as a page in the reader's language; elsewhere FastAPI's JSON."""
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith("/ui"):
        return await http_exception_handler(request, exc)
    status = exc.status_code
    key = f"error_{status}" if status in (400, 401, 403, 404, 409) else "error_other"
    if exc.detail == "csrf":
        key = "error_csrf"
    elif isinstance(exc.detail, str) and exc.detail.startswith("i18n:"):
        named = exc.detail.removeprefix("i18n:")
        key = named if i18n.Translator("en").has(named) else key
    response = templating.render(
        request,
        "error.html",
        {"message_key": key, "status": status},
        caller=getattr(request.state, "caller", None),
        status_code=status,
    )
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app``: its pages and its error pages."""
    app.include_router(router)
    app.add_exception_handler(auth.LoginRequired, _login_required)
    app.add_exception_handler(StarletteHTTPException, _page_refusal)
