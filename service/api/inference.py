"""The path every inference request takes at the edge, for /predict and V2 alike:
refuse while draining, resolve the model, read the body, validate, wait for the
batcher (dropping the work if the client goes away), answer, count."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
from fastapi import Request
from starlette.responses import Response

from service.api.body import Body, read_body
from service.api.errors import (
    CLIENT_CLOSED_REQUEST,
    internal_error_response,
    service_error_response,
    status_for,
)
from service.api.state import app_state
from service.errors import Abandoned, Draining, ServiceError
from service.registry import ModelVersion

Handler = Callable[[ModelVersion, Body], Awaitable[Response]]


async def handle(
    request: Request, name: str | None, version: str | None, handler: Handler, *, v2: bool = False
) -> Response:
    state = app_state(request)
    started = time.perf_counter()
    labels = ("", "")
    status = 500
    try:
        if state.registry.draining:
            raise Draining("the server is shutting down; retry on another replica")
        model = state.registry.resolve(name, version)
        labels = (model.name, str(model.version))
        assert model.batcher is not None  # resolve() returns ready versions only
        with model.batcher.reading():  # sheds before the body is read and parsed
            body = await read_body(request, state.settings.max_body_bytes, binary_extension=v2)
        response = await handler(model, body)
        status = response.status_code
        return response
    except ServiceError as exc:
        status = status_for(exc)
        return service_error_response(exc, v2=v2)
    except Abandoned:
        status = CLIENT_CLOSED_REQUEST
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except Exception as exc:
        return internal_error_response(exc, v2=v2)
    finally:
        state.metrics.requests.labels(*labels, str(status)).inc()
        if labels[0]:
            state.metrics.request_latency.labels(*labels).observe(time.perf_counter() - started)


async def run_model(request: Request, model: ModelVersion, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The model's raw output per sequence; raises Abandoned if the client leaves first."""
    assert model.batcher is not None
    timeout = app_state(request).settings.request_timeout_seconds
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        return await model.batcher.infer(sequences, timeout_seconds=timeout, gone=disconnected)
    finally:
        disconnected.cancel()


async def _wait_for_disconnect(request: Request) -> None:
    # NOTE: the body has been read, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
