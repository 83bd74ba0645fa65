"""Open Inference Protocol (KServe V2) REST endpoints, over the same batcher as /predict. The
inference routes (/v2/models/.../infer) are in `service.api.routes`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import __version__
from service.api import schemas
from service.api.auth import API_KEY
from service.api.health import add_readiness_route
from service.api.responses import json_response
from service.api.routes import add_model_routes
from service.api.state import app_state
from service.v2_metadata import PLATFORMS, model_tensors

EXTENSIONS = ("binary_tensor_data", "model_repository")
"""Protocol extensions this server implements, by the names Triton reports them under."""

health = APIRouter(prefix="/v2", tags=["v2"])
router = APIRouter(prefix="/v2", tags=["v2"], dependencies=[API_KEY])


@health.get("/health/live", response_model=schemas.V2Live, summary="V2 liveness")
async def live() -> Response:
    return json_response({"live": True})


add_readiness_route(health, "/health/ready", name="ready", summary="V2 readiness", v2=True)


@router.get(
    "",
    response_model=schemas.V2ServerMetadata,
    responses=schemas.errors(401, 500, v2=True),
    summary="V2 server metadata",
)
async def server_metadata() -> Response:
    return json_response({"name": "seqserve", "version": __version__, "extensions": list(EXTENSIONS)})


async def metadata(request: Request, name: str, version: str | None = None) -> Response:
    registry = app_state(request).registry
    versions = registry.model_versions(name)
    chosen = registry.lookup(name, version)
    if chosen.spec is None:
        raise chosen.not_ready()
    inputs, outputs = model_tensors(chosen.spec)
    runtime = chosen.runtime.name if chosen.runtime is not None else None
    return json_response(
        {
            "name": name,
            "versions": [str(v) for v in sorted(versions)] if version is None else [str(chosen.version)],
            "platform": PLATFORMS.get(runtime or "", ""),
            "inputs": inputs,
            "outputs": outputs,
        }
    )


async def ready(request: Request, name: str, version: str | None = None) -> Response:
    app_state(request).registry.resolve(name, version)  # raises ModelNotReady: 503 with Retry-After
    return json_response({"name": name, "ready": True})


add_model_routes(
    router, "/models/{name}", metadata, schemas.V2ModelMetadata, ("V2 model metadata", "V2 version metadata"), v2=True
)
add_model_routes(
    router, "/models/{name}/ready", ready, schemas.V2ModelReady, ("V2 model readiness", "V2 version readiness"), v2=True
)
