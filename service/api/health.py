"""Liveness, readiness and metrics: what orchestrators and Prometheus read."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api import schemas
from service.api.auth import API_KEY
from service.api.responses import json_response
from service.api.state import app_state
from service.errors import Draining, ServerNotReady
from service.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


# NOTE: a comment, not a docstring: FastAPI would put a docstring into the schema of both routes.
# 200 `{"ready": true}` when a request would be served now (plus `reasons`, the versions that failed to
# load, with strict readiness off); else 503 (`draining` or `not_ready`, with `Retry-After`) and the
# reasons. GET /readyz and GET /v2/health/ready.
async def readiness(request: Request) -> Response:
    ready, reasons = app_state(request).registry.readiness()
    if not ready:
        raise (Draining if "draining" in reasons else ServerNotReady)("; ".join(reasons))
    return json_response({"ready": True, "reasons": reasons} if reasons else {"ready": True})


def add_readiness_route(router: APIRouter, path: str, *, name: str, summary: str, v2: bool = False) -> None:
    """GET `path` answered by `readiness`, documented in the /v2 shapes when `v2`."""
    router.add_api_route(
        path,
        readiness,
        name=name,
        response_model=schemas.V2Ready if v2 else schemas.ReadyResponse,
        responses={
            503: {
                "model": schemas.V2ErrorResponse if v2 else schemas.ErrorResponse,
                "description": "Loading, a model failed, or draining",
            }
        },
        summary=summary,
    )


@router.get("/healthz", response_model=schemas.LiveResponse, summary="Liveness: the process answers")
async def healthz() -> Response:
    return json_response({"status": "ok"})


add_readiness_route(router, "/readyz", name="readyz", summary="Readiness: every model loaded and warmed, not draining")


@router.get(
    "/metrics",
    dependencies=[API_KEY],
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"},
        **schemas.errors(401, 500),
    },
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    return Response(app_state(request).metrics.render(), media_type=CONTENT_TYPE)
