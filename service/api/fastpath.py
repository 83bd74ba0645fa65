"""Inference requests straight to their handler, past FastAPI's routing and dependency layers.

Profiling a closed loop at 64 clients showed about a third of the event
loop's time per request in the framework between uvicorn and the endpoint
(FastAPI's and Starlette's middlewares, route matching, dependency solving),
time taken from the model on a machine with few cores. This ASGI app wraps the
FastAPI app (uvicorn serves it): it matches the inference routes (`POST` only)
and calls the very handlers the routes call, with the same API key check and
the same error answers; every other request, and the lifespan, goes on to
FastAPI unchanged. The routes stay declared in `v1` and `v2` for the OpenAPI
schema.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.api import v1, v2
from service.api.auth import require_api_key
from service.api.errors import service_error_response
from service.api.inference import Handler, handle
from service.errors import Unauthorized

_Route = tuple[re.Pattern[str], Callable[[Request], Handler], bool]

_NAME, _VERSION = r"(?P<name>[^/]+)", r"(?P<version>[^/]+)"
_ROUTES: list[_Route] = [
    (re.compile(r"/predict"), lambda r: lambda m, b: v1._predict(m, b, r), False),
    (re.compile(rf"/v1/models/{_NAME}/predict"), lambda r: lambda m, b: v1._predict(m, b, r), False),
    (
        re.compile(rf"/v1/models/{_NAME}/versions/{_VERSION}/predict"),
        lambda r: lambda m, b: v1._predict(m, b, r),
        False,
    ),
    (re.compile(rf"/v2/models/{_NAME}/infer"), lambda r: lambda m, b: v2._infer(m, b, r), True),
    (re.compile(rf"/v2/models/{_NAME}/versions/{_VERSION}/infer"), lambda r: lambda m, b: v2._infer(m, b, r), True),
]


class InferenceFastPath:
    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for pattern, handler, is_v2 in _ROUTES:
                match = pattern.fullmatch(path)
                if match is not None:
                    scope["app"] = self.app  # as FastAPI sets it: handlers find the app's state there
                    request = Request(scope, receive, send)
                    params = match.groupdict()
                    response = await _serve(request, params.get("name"), params.get("version"), handler, is_v2)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _serve(
    request: Request,
    name: str | None,
    version: str | None,
    handler: Callable[[Request], Handler],
    is_v2: bool,
) -> Response:
    try:
        await require_api_key(request)
    except Unauthorized as exc:
        return service_error_response(exc, v2=is_v2)
    answer: Awaitable[Response] = handle(request, name, version, handler(request), v2=is_v2)
    return await answer
