"""The FastAPI application: the routers bound to a running server's context."""

from __future__ import annotations

from fastapi import FastAPI

from ingest_server.api import photos, views
from ingest_server.api.deps import ApiContext


def create_app(context: ApiContext) -> FastAPI:
    """The API bound to a running server's context."""
    app = FastAPI(
        title="classcam", version="1", docs_url="/api/docs", openapi_url="/api/openapi.json"
    )
    app.state.context = context
    app.include_router(photos.router, prefix="/api/v1")
    app.include_router(views.router, prefix="/api/v1")
    return app
