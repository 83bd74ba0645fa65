"""Open Inference Protocol (KServe V2) REST endpoints, over the same batcher as /predict."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import __version__
from service.api import schemas
from service.api.auth import API_KEY
from service.api.body import Body
from service.api.errors import error_response
from service.api.health import readiness_response
from service.api.inference import handle, run_model
from service.api.responses import json_response
from service.api.state import app_state
from service.errors import ModelNotReady
from service.model_json import ModelJson
from service.registry import ModelVersion
from service.validation import V2_FEATURES, V2_LENGTHS, V2_TEXT

health = APIRouter(prefix="/v2", tags=["v2"])
router = APIRouter(prefix="/v2", tags=["v2"], dependencies=[API_KEY])
_MODEL_ERRORS = schemas.errors(*schemas.MODEL_ERRORS, v2=True)

_PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}


@health.get("/health/live", response_model=schemas.V2Live, summary="V2 liveness")
async def live() -> Response:
    return json_response({"live": True})


@health.get(
    "/health/ready",
    response_model=schemas.V2Ready,
    responses={503: {"model": schemas.V2ErrorResponse, "description": "Loading, a model failed, or draining"}},
    summary="V2 readiness",
)
async def ready(request: Request) -> Response:
    return readiness_response(request, {"ready": True})


@router.get(
    "",
    response_model=schemas.V2ServerMetadata,
    responses=schemas.errors(401, 500, v2=True),
    summary="V2 server metadata",
)
async def server_metadata() -> Response:
    return json_response({"name": "seqserve", "version": __version__, "extensions": []})


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


def _metadata(request: Request, name: str, version: str | None) -> Response:
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


@router.get(
    "/models/{name}", response_model=schemas.V2ModelMetadata, responses=_MODEL_ERRORS, summary="V2 model metadata"
)
async def model_metadata(name: str, request: Request) -> Response:
    return _metadata(request, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=schemas.V2ModelMetadata,
    responses=_MODEL_ERRORS,
    summary="V2 version metadata",
)
async def version_metadata(name: str, version: str, request: Request) -> Response:
    return _metadata(request, name, version)


def _model_ready(request: Request, name: str, version: str | None) -> Response:
    registry = app_state(request).registry
    try:
        registry.resolve(name, version)
    except ModelNotReady as exc:
        return error_response(503, exc.code, exc.message, v2=True)
    return json_response({"name": name, "ready": True})


@router.get(
    "/models/{name}/ready", response_model=schemas.V2ModelReady, responses=_MODEL_ERRORS, summary="V2 model readiness"
)
async def model_ready(name: str, request: Request) -> Response:
    return _model_ready(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=schemas.V2ModelReady,
    responses=_MODEL_ERRORS,
    summary="V2 version readiness",
)
async def version_ready(name: str, version: str, request: Request) -> Response:
    return _model_ready(request, name, version)


async def _infer(model: ModelVersion, body: Body, request: Request) -> Response:
    assert model.validator is not None and model.formatter is not None
    parsed = model.validator.v2(body, known_outputs=model.formatter.v2_output_names())
    outputs = await run_model(request, model, parsed.sequences)
    answer: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if parsed.id is not None:
        answer["id"] = parsed.id
    answer["outputs"] = model.formatter.v2(outputs, parsed.outputs)
    return json_response(answer)


_INFER: dict[str, Any] = {
    "response_model": schemas.V2InferResponse,
    "openapi_extra": schemas.v2_infer_body(),
    "responses": schemas.errors(*schemas.INFERENCE_ERRORS, v2=True),
}


@router.post("/models/{name}/infer", summary="V2 inference", **_INFER)
async def infer(name: str, request: Request) -> Response:
    return await handle(request, name, None, lambda model, body: _infer(model, body, request), v2=True)


@router.post("/models/{name}/versions/{version}/infer", summary="V2 inference, pinned version", **_INFER)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await handle(request, name, version, lambda model, body: _infer(model, body, request), v2=True)
