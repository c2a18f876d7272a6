"""Who is looking at a dashboard page: the same bearer tokens as the API, kept in a cookie.

A person signs in by pasting their API token (``classcam-server token create``) into the login
form; the server checks it as the API does (``auth.resolve_token``) and keeps it in a cookie
that scripts cannot read (HttpOnly), that no other site's page sends (SameSite=Strict), that
travels only over TLS when the page came over TLS (Secure) and only to ``/ui``. Every page
resolves the caller again on each request, from that cookie or an ``Authorization: Bearer``
header, so a revoked or expired token stops working at once. Scopes are the API's
(``api.deps.session_scope`` and friends): the dashboard shows nothing the same token could
not read through the API.

Forms that change something (login, logout, the "reviewed" mark) are POSTs whose ``Origin``
(or, without one, ``Referer``) must be this site: a second guard against cross-site requests
besides SameSite, for browsers or proxies that drop the attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from urllib.parse import unquote, urlencode, urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from ingest_server.api.deps import ApiContext, get_context, get_db
from ingest_server.auth import MAX_TOKEN_LENGTH, Caller, Role, bearer_token, resolve_token
from ingest_server.dashboard import templating

TOKEN_COOKIE = "classcam_token"
COOKIE_PATH = "/ui"
LOGIN_PATH = "/ui/login"
HOME_PATH = "/ui/queue"
# A cookie lasts as long as the browser session and at most this long; the token's own expiry
# and revocation are checked on every request regardless.
COOKIE_MAX_AGE_S = 12 * 3600

router = APIRouter()


class LoginRequired(Exception):
    """No usable token came with a page request: the person is sent to the login form, and back
    to ``next_url`` afterwards."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path of this dashboard only, never another site
    (``//evil.example``, ``/\\evil``, ``https://…``, dot segments and anything outside
    ``/ui/`` go home)."""
    if not value or not value.startswith("/ui/") or "\\" in value or value.startswith("//"):
        return HOME_PATH
    parts = urlsplit(value)
    if (
        parts.scheme
        or parts.netloc
        or any(seg in (".", "..") for seg in unquote(parts.path).split("/"))
    ):
        return HOME_PATH
    return value


def request_token(request: Request) -> str | None:
    """The token of a page request: the ``Authorization`` header first, then the cookie."""
    token = bearer_token(request.headers.get("authorization"))
    if token is not None:
        return token
    cookie = request.cookies.get(TOKEN_COOKIE, "").strip()
    return cookie if cookie and len(cookie) <= MAX_TOKEN_LENGTH else None


def page_caller(
    request: Request,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
) -> Caller:
    """The caller behind a page request; without a valid token, off to the login form."""
    token = request_token(request)
    caller = None
    if token is not None:
        try:
            caller = resolve_token(db, token, context.clock.now())
        finally:
            # As api.deps.get_caller: hand the connection back before the page's own reads.
            db.close()
    if caller is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    # For the error page, should the route refuse: it still shows who is signed in.
    request.state.caller = caller
    return caller


PageCaller = Annotated[Caller, Depends(page_caller)]


def page_require(*roles: Role, refusal: str = "error_403") -> Callable[[Caller], Caller]:
    """A dependency admitting only ``roles`` to a page; any other caller gets a 403 page
    saying ``refusal`` (an ``i18n`` key):
    ``caller: Annotated[Caller, Depends(page_require(Role.ADMIN, ...))]``."""

    def admitted(caller: PageCaller) -> Caller:
        if caller.role not in roles:
            raise HTTPException(403, f"i18n:{refusal}")
        return caller

    return admitted


REVIEWERS = (Role.ADMIN, Role.SUPERVISOR, Role.INSTITUTION)


def same_origin(request: Request) -> bool:
    """Whether a POST came from this site's own pages: its ``Origin`` (else its ``Referer``)
    names the host the request was sent to. The scheme is not compared: behind a proxy that
    ends TLS the server sees http while the browser says https."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    host = request.headers.get("host")
    return bool(parts.scheme in ("http", "https") and host and parts.netloc == host)


def check_origin(request: Request) -> None:
    """Refuse a state-changing form sent from another site (403)."""
    if not same_origin(request):
        raise HTTPException(403, "csrf")


def login_redirect(next_url: str) -> RedirectResponse:
    """To the login form, coming back to ``next_url`` after it."""
    return RedirectResponse(f"{LOGIN_PATH}?{urlencode({'next': next_url})}", status_code=303)


@router.get("/ui/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    """The sign-in form: one field for the token."""
    return templating.render(
        request, "login.html", {"next": safe_next(next), "refused": False, "logged_out": False}
    )


@router.post("/ui/login", response_class=HTMLResponse)
def login(
    request: Request,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    token: Annotated[str, Form(max_length=MAX_TOKEN_LENGTH)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Check the pasted token; on success keep it in the session cookie and go on."""
    check_origin(request)
    token = token.strip()
    caller = resolve_token(db, token, context.clock.now()) if token else None
    db.close()
    if caller is None:
        return templating.render(
            request,
            "login.html",
            {"next": safe_next(next), "refused": True, "logged_out": False},
            status_code=401,
        )
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        max_age=COOKIE_MAX_AGE_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/ui/logout", response_class=HTMLResponse)
def logout(request: Request) -> Response:
    """Forget the cookie (the token itself stays valid: revoke it with the CLI)."""
    check_origin(request)
    response = templating.render(
        request, "login.html", {"next": HOME_PATH, "refused": False, "logged_out": True}
    )
    response.delete_cookie(
        TOKEN_COOKIE,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response
