"""The model repository extension (Triton's, over the Open Inference Protocol): list every model version
on disk or held, and load or unload a model or one version while serving.

The index is read-only and always served, behind the API key like `/v1/models`. Load and unload change
what every client is answered: they are routes only with `repository_api` on, behind `admin_api_key`
when one is set (the inference key is then refused there), else behind the API key.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service.api import schemas
from service.api.auth import API_KEY, API_KEY_SCHEMA, check_key
from service.api.responses import json_response
from service.api.state import app_state
from service.errors import InvalidInput, InvalidJSON
from service.registry import IndexEntry
from service.settings import Settings

log = logging.getLogger(__name__)

TRITON_STATES = {"ready": "READY", "loading": "LOADING", "unloading": "UNLOADING"}
"""Triton's state names; every other state (failed, unloaded, only on disk) is UNAVAILABLE."""

_MANAGEMENT_ERRORS = schemas.errors(400, 401, 404, 500, 503, v2=True)


async def _require_admin_key(request: Request, _schema: None = API_KEY_SCHEMA) -> None:
    state = app_state(request)
    admin = state.settings.admin_api_key
    check_key(request, admin.get_secret_value().encode() if admin is not None else state.api_key)


ADMIN_KEY = Depends(_require_admin_key)


def _entry(row: IndexEntry) -> dict[str, Any]:
    state = TRITON_STATES.get(row.state or "", "UNAVAILABLE")
    return {"name": row.name, "version": str(row.version), "state": state, "reason": row.reason}


async def index(request: Request, ready: bool = False) -> Response:
    """GET or POST, as Triton's clients send it: only the versions ready for inference with `?ready=true` or
    the optional body `{"ready": true}`."""
    raw = await request.body()
    try:
        body: Any = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidJSON("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput('the body must be a JSON object, e.g. {"ready": true}')
    ready_only = body.get("ready", ready)
    if not isinstance(ready_only, bool):
        raise InvalidInput("ready: must be a boolean")
    rows = [_entry(row) for row in await app_state(request).registry.index()]
    return json_response([row for row in rows if row["state"] == "READY" or not ready_only])


async def _not_allowed() -> Response:
    raise HTTPException(405, headers={"Allow": "GET, POST"})


async def load_model(request: Request, name: str) -> Response:
    await app_state(request).registry.load_model(name)
    return Response(status_code=200)


async def unload_model(request: Request, name: str) -> Response:
    await app_state(request).registry.unload_model(name)
    return Response(status_code=200)


async def load_version(request: Request, name: str, version: str) -> Response:
    await app_state(request).registry.load_version(name, version)
    return Response(status_code=200)


async def unload_version(request: Request, name: str, version: str) -> Response:
    await app_state(request).registry.unload_version(name, version)
    return Response(status_code=200)


def router(settings: Settings) -> APIRouter:
    """The index, and with `settings.repository_api` the load and unload routes."""
    routes = APIRouter(prefix="/v2/repository", tags=["repository"])
    body = {"$ref": f"#/components/schemas/{schemas.V2RepositoryIndexRequest.__name__}"}
    # NOTE: a route per method, as one route for both would give both operations one OpenAPI id; a third
    # answers the other methods, whose 405 would otherwise name only the first route's method in `Allow`.
    for method in ("GET", "POST"):
        routes.add_api_route(
            "/index",
            index,
            methods=[method],
            name=f"repository_index_{method.lower()}",
            dependencies=[API_KEY],
            response_model=list[schemas.V2RepositoryIndexEntry],
            responses=schemas.errors(400, 401, 422, 500, v2=True),
            openapi_extra={"requestBody": {"required": False, "content": {"application/json": {"schema": body}}}},
            summary="Every model version, held or on disk, with its state",
        )
    routes.add_api_route("/index", _not_allowed, methods=["PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False)
    if not settings.repository_api:
        return routes
    if settings.admin_api_key is None and settings.api_key is None:
        log.warning("the repository API is on with no key: anyone who reaches %s can load and unload", settings.host)
    ok: dict[int | str, dict[str, Any]] = {
        200: {"description": "Done: loaded, warmed and served; or unloaded and released", "content": {}}
    }
    management: tuple[tuple[str, Callable[..., Awaitable[Response]], str], ...] = (
        ("/models/{name}/load", load_model, "Load a model's new versions from its directory; unload removed ones"),
        ("/models/{name}/unload", unload_model, "Unload every version of a model once its requests are answered"),
        ("/models/{name}/versions/{version}/load", load_version, "Load one version from its directory"),
        ("/models/{name}/versions/{version}/unload", unload_version, "Unload one version once it has answered"),
    )
    for path, endpoint, summary in management:
        routes.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            dependencies=[ADMIN_KEY],
            response_class=Response,
            responses={**ok, **_MANAGEMENT_ERRORS},
            summary=summary,
        )
    return routes
