"""Open Inference Protocol (KServe V2) REST endpoints, over the same batcher as /predict. The
inference routes (/v2/models/.../infer) are in `service.api.routes`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import __version__
from service.api import schemas
from service.api.auth import API_KEY
from service.api.health import add_readiness_route
from service.api.responses import json_response
from service.api.routes import add_model_routes
from service.api.state import app_state
from service.model_json import ModelJson
from service.validation import V2_FEATURES, V2_LENGTHS, V2_TEXT

EXTENSIONS = ("binary_tensor_data", "model_repository")
"""Protocol extensions this server implements, by the names Triton reports them under."""

health = APIRouter(prefix="/v2", tags=["v2"])
router = APIRouter(prefix="/v2", tags=["v2"], dependencies=[API_KEY])

_PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}


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


def _tensors(spec: ModelJson) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if spec.input.kind == "text":
        inputs = [{"name": V2_TEXT, "datatype": "BYTES", "shape": [-1]}]
    else:
        inputs = [
            {"name": V2_FEATURES, "datatype": "FP32", "shape": [-1, -1, spec.input.features]},
            {"name": V2_LENGTHS, "datatype": "INT64", "shape": [-1]},
        ]
    if spec.task == "regression":
        count = len(spec.output_names) if spec.output_names else -1
        return inputs, [{"name": "values", "datatype": "FP32", "shape": [-1, count]}]
    classes = len(spec.labels or ())
    steps = [-1, -1] if spec.task == "tagging" else [-1]
    outputs = [
        {"name": "probabilities", "datatype": "FP32", "shape": [*steps, classes]},
        {"name": "label", "datatype": "BYTES", "shape": steps},
    ]
    if spec.graph.output_activation == "softmax":
        outputs.append({"name": "logits", "datatype": "FP32", "shape": [*steps, classes]})
    return inputs, outputs


async def metadata(request: Request, name: str, version: str | None = None) -> Response:
    registry = app_state(request).registry
    versions = registry.model_versions(name)
    chosen = registry.lookup(name, version)
    if chosen.spec is None:
        raise chosen.not_ready()
    inputs, outputs = _tensors(chosen.spec)
    runtime = chosen.runtime.name if chosen.runtime is not None else None
    return json_response(
        {
            "name": name,
            "versions": [str(v) for v in sorted(versions)] if version is None else [str(chosen.version)],
            "platform": _PLATFORMS.get(runtime or "", ""),
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
