"""seqserve's own API: /v1/models. Its inference routes (/predict, /v1/models/.../predict) are in
`service.api.routes`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api import schemas
from service.api.auth import API_KEY
from service.api.responses import json_response
from service.api.routes import add_model_routes
from service.api.state import app_state
from service.registry import ModelVersion

router = APIRouter(tags=["models"], dependencies=[API_KEY])


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


async def metadata(request: Request, name: str, version: str | None = None) -> Response:
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
            "input": {
                "kind": spec.input.kind,
                "features": spec.input.features,
                "max_length": spec.input.max_length,
                "vocabulary_size": spec.input.vocabulary_size,
            },
            "labels": spec.labels,
            "output_names": spec.output_names,
            "padding": spec.padding,
            "streaming": spec.can_stream,
            "versions": [_version_info(v) for _, v in sorted(registry.model_versions(name).items())],
        }
    )


add_model_routes(
    router, "/v1/models/{name}", metadata, schemas.ModelMetadata, ("Model metadata", "Metadata of one version")
)
