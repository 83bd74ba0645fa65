"""seqserve's own API: /predict and /v1/models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api import schemas
from service.api.auth import API_KEY
from service.api.body import Body
from service.api.inference import handle, run_model
from service.api.responses import json_response
from service.api.state import app_state
from service.registry import ModelVersion

router = APIRouter(dependencies=[API_KEY])

_PREDICT: dict[str, Any] = {
    "response_model": schemas.PredictResponse,
    "openapi_extra": schemas.request_body(schemas.PredictRequest),
    "responses": schemas.errors(*schemas.INFERENCE_ERRORS),
    "tags": ["predict"],
}


async def _predict(model: ModelVersion, body: Body, request: Request) -> Response:
    assert model.validator is not None and model.formatter is not None
    sequences = model.validator.predict(body)
    outputs = await run_model(request, model, sequences)
    return json_response({"model": model.name, "version": model.version, "outputs": model.formatter.predict(outputs)})


@router.post("/predict", summary="Predict with the default model", **_PREDICT)
async def predict_default(request: Request) -> Response:
    return await handle(request, None, None, lambda model, body: _predict(model, body, request))


@router.post("/v1/models/{name}/predict", summary="Predict with a model's default version", **_PREDICT)
async def predict(name: str, request: Request) -> Response:
    return await handle(request, name, None, lambda model, body: _predict(model, body, request))


@router.post("/v1/models/{name}/versions/{version}/predict", summary="Predict with a pinned version", **_PREDICT)
async def predict_version(name: str, version: str, request: Request) -> Response:
    return await handle(request, name, version, lambda model, body: _predict(model, body, request))


def _version_info(version: ModelVersion) -> dict[str, Any]:
    runtime = version.runtime
    return {
        "version": version.version,
        "state": version.state,
        "runtime": runtime.name if runtime else None,
        "device": runtime.device if runtime else None,
        "device_reason": version.device_reason,
        "error": version.error,
    }


@router.get(
    "/v1/models",
    response_model=schemas.ModelList,
    responses=schemas.errors(401, 500),
    tags=["models"],
    summary="List models and versions",
)
async def list_models(request: Request) -> Response:
    registry = app_state(request).registry
    models = []
    for name in registry.names():
        versions = registry.model_versions(name)
        models.append(
            {
                "name": name,
                "default_version": registry.default_version(name),
                "versions": [_version_info(v) for _, v in sorted(versions.items())],
            }
        )
    return json_response({"default_model": registry.default_model(), "models": models})


def _metadata(request: Request, name: str, version: str | None) -> Response:
    registry = app_state(request).registry
    chosen = registry.lookup(name, version)
    spec = chosen.spec
    if spec is None:
        raise chosen.not_ready()
    return json_response(
        {
            "name": spec.name,
            "version": spec.version,
            "default_version": registry.default_version(name),
            "task": spec.task,
            "description": spec.description,
            "input": {"kind": spec.input.kind, "features": spec.input.features, "max_length": spec.input.max_length},
            "labels": spec.labels,
            "output_names": spec.output_names,
            "padding": spec.padding,
            "versions": [_version_info(v) for _, v in sorted(registry.model_versions(name).items())],
        }
    )


@router.get(
    "/v1/models/{name}",
    response_model=schemas.ModelMetadata,
    responses=schemas.errors(*schemas.MODEL_ERRORS),
    tags=["models"],
    summary="Model metadata",
)
async def model_metadata(name: str, request: Request) -> Response:
    return _metadata(request, name, None)


@router.get(
    "/v1/models/{name}/versions/{version}",
    response_model=schemas.ModelMetadata,
    responses=schemas.errors(*schemas.MODEL_ERRORS),
    tags=["models"],
    summary="Metadata of one version",
)
async def version_metadata(name: str, version: str, request: Request) -> Response:
    return _metadata(request, name, version)
