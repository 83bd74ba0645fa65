"""Inference requests straight to their handler, past FastAPI's routing and dependency layers.

Profiling a closed loop showed a large share of the event loop's time per
request spent in the framework between uvicorn and the endpoint (FastAPI's and
Starlette's middlewares, route matching, dependency solving), time taken from
the model on a machine with few cores. This ASGI app wraps the FastAPI app
(uvicorn serves it): it matches the inference routes (`POST` only, from
`routes.INFERENCE_ROUTES`) and calls `inference.serve`, as their FastAPI
routes do; every other request, and the lifespan, goes on to FastAPI unchanged. Served by
seqserve's protocol, the answer is written whole (`wire.WholeAnswer`), not as two ASGI messages.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from service.api.inference import serve
from service.api.routes import INFERENCE_ROUTES, Operation, path_pattern
from service.api.state import STATE_KEY, AppState
from service.wire import ANSWER, WholeAnswer

_ROUTES: tuple[tuple[re.Pattern[str], Operation], ...] = tuple(
    (path_pattern(route.path), route.operation) for route in INFERENCE_ROUTES
)


class InferenceFastPath:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.state: AppState = app.state.seqserve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for pattern, operation in _ROUTES:
                match = pattern.fullmatch(path)
                if match is not None:
                    scope["app"] = self.app  # as FastAPI sets it
                    scope[STATE_KEY] = self.state  # handlers find the app's state here
                    params = match.groupdict()
                    scope["path_params"] = params  # as Starlette sets it: a stream route's handler reads its id
                    request = Request(scope, receive, send)
                    response = await serve(
                        request, operation.handler, params.get("name"), params.get("version"), v2=operation.v2
                    )
                    answer: WholeAnswer | None = scope.get(ANSWER)  # set by seqserve's protocol (`wire`)
                    if (
                        answer is None
                        or response.background is not None
                        or not isinstance(response.body, bytes)
                        or not answer(response.status_code, response.raw_headers, response.body)
                    ):
                        await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
