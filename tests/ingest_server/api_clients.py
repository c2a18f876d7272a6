"""Tests that call the HTTP API do so as an admin (the API refuses anonymous callers)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ingest_server.api.deps import ApiContext
from ingest_server.auth import Role, create_token


def admin_token(context: ApiContext) -> str:
    """A fresh admin token in ``context``'s database."""
    with context.session_factory.begin() as db:
        _, token = create_token(db, Role.ADMIN, context.clock.now(), name="tests")
    return token


def authorize(client: TestClient) -> TestClient:
    """Send an admin token with every request of ``client`` (a request's own
    ``Authorization`` header, a lecturer's, still wins)."""
    context: ApiContext = client.app.state.context  # type: ignore[attr-defined]
    client.headers["Authorization"] = f"Bearer {admin_token(context)}"
    return client
