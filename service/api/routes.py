"""The inference routes, declared once, and the helpers that turn route declarations into FastAPI routes.

`INFERENCE_ROUTES` is the one table of inference routes. From it `inference_router` builds the
FastAPI routes (OpenAPI documents them; a request that reaches FastAPI is answered by the same
`inference.serve` as on the fast path), and `fastpath` builds its matcher with `path_pattern`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from service.api import schemas
from service.api.auth import API_KEY_SCHEMA
from service.api.body import Body
from service.api.inference import Handler, Prepared, infer, predict, prepare_infer, prepare_predict, serve
from service.api.streams import v1_chunk
from service.registry import ModelVersion

_PARAMETER = re.compile(r"\{(\w+)\}")
_REQUEST = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)


def path_pattern(path: str) -> re.Pattern[str]:
    """A path template as a regex, each `{parameter}` one path segment (as Starlette matches it);
    for `fullmatch`."""
    parts = _PARAMETER.split(path)  # literal, parameter, literal, ...
    return re.compile("".join(f"(?P<{p}>[^/]+)" if i % 2 else re.escape(p) for i, p in enumerate(parts)))


def pinned(path: str) -> str:
    """The route that pins a version, beside the one for a model's default version."""
    return path.replace("{name}", "{name}/versions/{version}", 1)


# A FastAPI endpoint for `path` calling `handler(request, **path_parameters)`. Its signature names
# just the parameters in `path`, as a function written for that path would, so that FastAPI
# documents and passes them: one handler serves a route and its pinned-version twin.
# NOTE: no docstring: FastAPI would put it into the OpenAPI schema as the route's description.
class Endpoint:
    def __init__(self, path: str, handler: Callable[..., Awaitable[Response]]) -> None:
        names = _PARAMETER.findall(path)
        inspect.signature(handler).bind(None, **dict.fromkeys(names, ""))  # a mismatch fails at start-up
        self._handler = handler
        parameters = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str) for n in names]
        self.__signature__ = inspect.Signature([*parameters, _REQUEST])

    async def __call__(self, request: Request, **path: str) -> Response:
        return await self._handler(request, **path)


def add_model_routes(
    router: APIRouter,
    path: str,
    handler: Callable[..., Awaitable[Response]],
    response_model: type[BaseModel],
    summaries: tuple[str, str],
    *,
    v2: bool = False,
) -> None:
    """GET `path` (a model's default version) and its `pinned` twin, both answered by
    `handler(request, name, version=None)`; named `model_<handler>` and `version_<handler>`
    (the start of their OpenAPI operation ids), errors documented in the /v2 shape when `v2`."""
    responses = schemas.errors(*schemas.MODEL_ERRORS, v2=v2)
    for kind, route_path, summary in (("model", path, summaries[0]), ("version", pinned(path), summaries[1])):
        router.add_api_route(
            route_path,
            Endpoint(route_path, handler),
            methods=["GET"],
            name=f"{kind}_{handler.__name__}",
            summary=summary,
            response_model=response_model,
            responses=responses,
        )


@dataclass(frozen=True)
class Operation:
    """What the inference routes of one protocol share."""

    handler: Handler
    v2: bool
    """Open Inference Protocol: the V2 error shape, and the binary tensor extension for the body."""
    openapi: Mapping[str, Any]
    """The routes' OpenAPI description but the summary: response model, request body, responses, tags."""
    prepare: Callable[[ModelVersion, Body], Prepared | None] | None = None
    """What `handler` does before it waits for the batcher, for the direct path (`service.api.direct`): None
    when a request may need more (a stream's chunk), which `handler` then answers."""


PREDICT = Operation(
    predict,
    prepare=prepare_predict,
    v2=False,
    openapi={
        "response_model": schemas.PredictResponse,
        "openapi_extra": schemas.request_body(schemas.PredictRequest),
        "responses": schemas.errors(*schemas.INFERENCE_ERRORS),
        "tags": ["predict"],
    },
)
INFER = Operation(
    infer,
    prepare=prepare_infer,
    v2=True,
    openapi={
        "response_model": schemas.V2InferResponse,
        "openapi_extra": schemas.v2_infer_body(),
        "responses": schemas.errors(*schemas.INFERENCE_ERRORS, v2=True),
        "tags": ["v2"],
    },
)
STREAM = Operation(
    v1_chunk,
    v2=False,
    openapi={
        "response_model": schemas.StreamChunkResponse,
        "openapi_extra": schemas.request_body(schemas.StreamChunkRequest),
        "responses": schemas.errors(*schemas.INFERENCE_ERRORS, *schemas.STREAM_ERRORS),
        "tags": ["streams"],
    },
)


@dataclass(frozen=True)
class InferenceRoute:
    path: str
    """Path template; `{name}` and `{version}` are its parameters (absent: the default)."""
    operation: Operation
    name: str
    """FastAPI's name of the route, the start of its OpenAPI operation id."""
    summary: str

    async def endpoint(
        self, request: Request, name: str | None = None, version: str | None = None, **_: str
    ) -> Response:
        """The route's FastAPI endpoint; the fast path calls `serve` itself. Other path parameters (a stream
        id) are read by the handler from `request.path_params`."""
        return await serve(request, self.operation.handler, name, version, v2=self.operation.v2)


INFERENCE_ROUTES: tuple[InferenceRoute, ...] = (
    InferenceRoute("/predict", PREDICT, "predict_default", "Predict with the default model"),
    InferenceRoute("/v1/models/{name}/predict", PREDICT, "predict", "Predict with a model's default version"),
    InferenceRoute(
        "/v1/models/{name}/versions/{version}/predict", PREDICT, "predict_version", "Predict with a pinned version"
    ),
    InferenceRoute("/v2/models/{name}/infer", INFER, "infer", "V2 inference"),
    InferenceRoute(
        "/v2/models/{name}/versions/{version}/infer", INFER, "infer_version", "V2 inference, pinned version"
    ),
    InferenceRoute("/v1/models/{name}/streams/{stream}", STREAM, "stream_chunk", "One chunk of a stream"),
    InferenceRoute(
        "/v1/models/{name}/versions/{version}/streams/{stream}",
        STREAM,
        "stream_chunk_version",
        "One chunk of a stream, pinned version",
    ),
)
"""Every inference route (POST); the fast path answers them all."""


def inference_router(operation: Operation) -> APIRouter:
    """The FastAPI routes of the table's entries for `operation`."""
    router = APIRouter(dependencies=[API_KEY_SCHEMA])
    for route in INFERENCE_ROUTES:
        if route.operation is operation:
            endpoint = Endpoint(route.path, route.endpoint)
            router.add_api_route(
                route.path, endpoint, methods=["POST"], name=route.name, summary=route.summary, **operation.openapi
            )
    return router
