"""``GET /metrics``: the server's figures in Prometheus' text format (``ingest_server.metrics``;
what each one means: docs/metrics.md).

Behind a bearer token like every route: a scraper sends a supervisor's (or admin's) token in its
``authorization`` setting. Scrapes are not written to the audit log: they show counts, never
evidence, and every 15 seconds they would bury the entries that matter.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ingest_server.api.deps import Caller, Role, require

router = APIRouter()

METRICS_SCRAPERS = (Role.ADMIN, Role.SUPERVISOR)


@router.get(
    "/metrics",
    tags=["metrics"],
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
def read_metrics(
    request: Request,
    caller: Annotated[Caller, Depends(require(*METRICS_SCRAPERS))],
) -> Response:
    """Ingest counters, rejections by reason, devices by presence, recent sessions by verdict,
    the feed's newest event and the ingest lag, and the process basics; read at each scrape."""
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
