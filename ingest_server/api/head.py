"""HEAD wherever GET is served: the same status and headers, no body, nothing shown logged.

HTTP makes HEAD of every GET resource (RFC 9110 9.3.2); FastAPI's routes answer only the
methods they name, so a HEAD of a page or an API read got 405. Rather than doubling every GET
route (and the OpenAPI document with it), ``HeadAsGet`` runs a HEAD that no route takes
itself as the GET it stands for, so authentication, scope and every refusal are exactly the
GET's (another school's session answers 403), and drops the body on the way out. The file
routes that answer HEAD themselves (``api.evidence_files``, ``dashboard.media``) are left
to do so.

The GET runs while ``audit.headers_only`` is set: its "viewed" and "exported" rows are not
written, since a HEAD shows no evidence (a client may probe a page's size or status).
"""

from __future__ import annotations

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest_server import audit


class HeadAsGet:
    """ASGI middleware answering a HEAD that no route takes as its GET, without the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or _taken(scope):
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
            elif not message.get("more_body", False):
                # The GET's body is dropped; the Content-Length sent is the GET's (as HTTP
                # says a HEAD's should be).
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        with audit.headers_only():
            await self.app(dict(scope, method="GET"), receive, headers_only)


def _taken(scope: Scope) -> bool:
    """Whether a route (or a mount) of the application answers this HEAD itself."""
    router = scope["app"].router
    return any(route.matches(scope)[0] is Match.FULL for route in router.routes)
