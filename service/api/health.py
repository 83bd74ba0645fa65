"""Liveness, readiness and metrics: what orchestrators and Prometheus read."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api import schemas
from service.api.auth import API_KEY
from service.api.errors import error_response, is_v2
from service.api.responses import json_response
from service.api.state import app_state
from service.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


def readiness_response(request: Request, body: dict[str, object]) -> Response:
    ready, reasons = app_state(request).registry.readiness()
    if ready:
        return json_response(body)
    code = "draining" if "draining" in reasons else "not_ready"
    return error_response(503, code, "; ".join(reasons), v2=is_v2(request))


@router.get("/healthz", response_model=schemas.LiveResponse, summary="Liveness: the process answers")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    response_model=schemas.ReadyResponse,
    responses={503: {"model": schemas.ErrorResponse, "description": "Loading, a model failed, or draining"}},
    summary="Readiness: every model loaded and warmed, not draining",
)
async def readyz(request: Request) -> Response:
    return readiness_response(request, {"ready": True})


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
