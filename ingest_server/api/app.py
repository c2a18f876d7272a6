"""The FastAPI application: the routers bound to a running server's context."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from ingest_server import dashboard
from ingest_server.api import evidence, exports, metrics, photos, rollcall, views
from ingest_server.api.deps import BODY_ROLES, ApiContext, token_role
from ingest_server.api.guard import BodyGuard
from ingest_server.api.head import HeadAsGet
from ingest_server.metrics import metrics_registry

# Room for the multipart framing and the form fields around the largest photo allowed.
FORM_ALLOWANCE = 1024 * 1024


class Refusal(BaseModel):
    """A refusal's body, from a route or from the body guard before it: ``detail`` says why
    (a sentence, or for a refused photo its reason code and detail)."""

    detail: Any


class PhotoRefusalReason(BaseModel):
    reason: str  # ingest_server.photos.PhotoRejectReason
    detail: str


class FieldError(BaseModel):
    """One field FastAPI could not validate (its own 422 body lists them)."""

    loc: list[str | int]
    msg: str
    type: str


class PhotoInvalid(BaseModel):
    """A 422 of the photo route: fields that do not validate, or a photo refused for what it
    shows or lacks (no time, no place, ...), with its reason code."""

    detail: list[FieldError] | PhotoRefusalReason


def _refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Refusal} for code in codes}


# What each router's routes may answer besides success and 422, declared in the OpenAPI
# document so that clients (and the schemathesis suite) know every answer they can get.
READ_AND_COMMAND_REFUSALS = _refusals(401, 403, 404, 409)
PHOTO_REFUSALS = _refusals(400, 401, 403, 404, 413, 415) | {
    422: {"model": PhotoInvalid, "description": "Invalid fields, or the photo was refused"}
}


def create_app(context: ApiContext) -> FastAPI:
    """The API bound to a running server's context. Every route needs a bearer token
    (``api.deps``); a body is refused before it is read without one, or past the cap."""
    app = FastAPI(
        title="classcam", version="1", docs_url="/api/docs", openapi_url="/api/openapi.json"
    )
    app.state.context = context
    app.include_router(photos.router, prefix="/api/v1", responses=PHOTO_REFUSALS)
    app.include_router(evidence.router, prefix="/api/v1", responses=READ_AND_COMMAND_REFUSALS)
    app.include_router(views.router, prefix="/api/v1", responses=READ_AND_COMMAND_REFUSALS)
    app.include_router(exports.router, prefix="/api/v1", responses=READ_AND_COMMAND_REFUSALS)
    app.include_router(metrics.router, responses=_refusals(401, 403))
    app.include_router(rollcall.router, prefix="/api/v1", responses=_refusals(401))
    # The people's pages under /ui (no OpenAPI entries; their refusals are pages, not JSON).
    dashboard.install(app)
    app.state.metrics = metrics_registry(
        context.session_factory, context.clock, context.live_ingest
    )
    # HEAD of every GET (same answer, no body, no viewing logged), inside the body guard.
    app.add_middleware(HeadAsGet)
    app.add_middleware(
        BodyGuard,
        token_role=partial(token_role, context),
        body_roles=BODY_ROLES,
        max_body_bytes=context.settings.max_photo_bytes + FORM_ALLOWANCE,
        open_forms=dashboard.FORM_PATHS,
        max_form_bytes=dashboard.MAX_FORM_BYTES,
    )
    return app
