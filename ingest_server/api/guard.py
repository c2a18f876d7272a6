"""The body guard: a request with a body is let in only with a token that lets someone in, whose
role may send that body (only a lecturer uploads photos), and only up to a size cap, decided
before the body is read.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``, which would buffer the body): the
credentials are checked on the headers alone and a refusal is sent without one ``receive()``, so
the server reads no more than the socket buffers hold (uvicorn stops reading a connection whose
app is not receiving). A declared ``Content-Length`` over the cap is refused at once; a chunked
body is counted as it streams and cut at the cap.

The dashboard's forms (``open_forms``: the login form, and forms sent with the session cookie,
which a browser cannot turn into a bearer header) are let in without a bearer token, capped at
``max_form_bytes``: their routes authenticate the cookie and check the form's origin themselves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest_server.auth import Role, bearer_token

# (method, path pattern, the roles that may send a body there).
BodyRoles = Sequence[tuple[str, re.Pattern[str], frozenset[Role]]]


async def _reply(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # The unread body stays on the socket: the connection cannot be reused.
    raw.append((b"connection", b"close"))
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _has_body(headers: Headers) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0"


class BodyGuard:
    """Refuse a body before reading it: 401 without a valid token, 403 from a role that may
    never send a body to that route (``body_roles``), 413 over ``max_body_bytes``.

    ``token_role`` (the role a token lets in, None if none) is called in a worker thread (it
    reads the database).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token_role: Callable[[str], Role | None],
        max_body_bytes: int,
        body_roles: BodyRoles = (),
        open_forms: re.Pattern[str] | None = None,
        max_form_bytes: int = 0,
    ) -> None:
        self.app = app
        self.open_forms = open_forms
        self.max_form_bytes = max_form_bytes
        self.token_role = token_role
        self.max_body_bytes = max_body_bytes
        self.body_roles = body_roles

    def _roles_for(self, method: str, path: str) -> frozenset[Role] | None:
        for rule_method, pattern, roles in self.body_roles:
            if method == rule_method and pattern.fullmatch(path):
                return roles
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not _has_body(headers):
            await self.app(scope, receive, send)
            return
        token = bearer_token(headers.get("authorization"))
        if token is None and self.open_forms and self.open_forms.fullmatch(scope["path"]):
            await self._capped(scope, receive, send, self.max_form_bytes)
            return
        role = None if token is None else await anyio.to_thread.run_sync(self.token_role, token)
        if role is None:
            await _reply(
                send,
                401,
                "a request with a body needs a valid token (Authorization: Bearer …)",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        allowed = self._roles_for(scope["method"], scope["path"])
        if allowed is not None and role not in allowed:
            await _reply(send, 403, f"the {role} role may not do this", {})
            return
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _reply(send, 400, "Content-Length is not a number", {})
                return
            if int(declared) > self.max_body_bytes:
                await _reply(send, 413, self._too_large(), {})
                return
        await self._capped(scope, receive, send, self.max_body_bytes)

    def _too_large(self) -> str:
        return f"request body over {self.max_body_bytes} bytes"

    async def _capped(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        """Run the app counting the body as it streams: past ``cap`` the app sees the client
        go away and the caller gets 413 (if the app has not begun its own answer)."""
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > cap:
            await _reply(send, 413, f"request body over {cap} bytes", {})
            return
        received = 0
        cut = False
        app_answered = False
        guard_answered = False  # then whatever the app says afterwards is dropped

        async def counted_receive() -> Message:
            nonlocal received, cut, guard_answered
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    cut = True
                    if not app_answered:
                        guard_answered = True
                        await _reply(send, 413, f"request body over {cap} bytes", {})
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal app_answered
            if guard_answered:
                return
            if message["type"] == "http.response.start":
                app_answered = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)
