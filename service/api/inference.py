"""The path every inference request takes at the edge, and the handlers at its end.

`serve` is that path, for /predict and V2 alike: check the API key, refuse while
draining, resolve the model, read the body, call the route's handler, answer any
error through `error_answer`, count. The handlers (`predict`, `infer`) validate
the body, wait for the batcher (dropping the work if the client goes away) and
format the answer. Both the fast path and the FastAPI routes call `serve`; the
routes themselves are declared once, in `service.api.routes`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from starlette.responses import Response

from service.api.auth import require_api_key
from service.api.body import Body, read_body
from service.api.errors import error_answer
from service.api.responses import binary_response, json_response
from service.api.state import app_state
from service.api.streams import sequence_parameters, v2_stream_chunk
from service.errors import Draining, Unauthorized
from service.outputs import v2_binary
from service.registry import ModelVersion
from service.wire import DISCONNECTED

Handler = Callable[[Request, ModelVersion, Body], Awaitable[Response]]
"""What answers an inference request once its model is resolved and its body read."""


async def serve(request: Request, handler: Handler, name: str | None, version: str | None, *, v2: bool) -> Response:
    """The answer to an inference request for `name` (None: the default model) at `version`
    (None: its default version); errors in the /v2 shape when `v2`."""
    try:
        await require_api_key(request)
    except Unauthorized as exc:
        return error_answer(exc, v2=v2)
    state = app_state(request)
    started = time.perf_counter()
    labels = ("", "")
    response: Response | None = None  # none when cancelled: counted as a 500
    try:
        if state.registry.draining:
            raise Draining("the server is shutting down; retry on another replica")
        model = state.registry.resolve(name, version)
        labels = (model.name, str(model.version))
        assert model.batcher is not None  # resolve() returns ready versions only
        with model.batcher.reading():  # sheds before the body is read and parsed
            body = await read_body(request, state.settings.max_body_bytes, binary_extension=v2)
        response = await handler(request, model, body)
    except Exception as exc:
        response = error_answer(exc, v2=v2)
    finally:
        status = 500 if response is None else response.status_code
        state.metrics.answered(*labels, status, time.perf_counter() - started if labels[0] else None)
    return response


@dataclass(frozen=True, slots=True)
class Prepared:
    """An inference request validated: its sequences, and how its answer is made from their outputs."""

    sequences: Sequence[np.ndarray]
    answer: Callable[[list[np.ndarray]], Response]


def prepare_predict(model: ModelVersion, body: Body) -> Prepared:
    """A /predict request's sequences and answer; raises the body's errors."""
    assert model.validator is not None and model.formatter is not None
    formatter = model.formatter

    def answer(outputs: list[np.ndarray]) -> Response:
        return json_response({"model": model.name, "version": model.version, "outputs": formatter.predict(outputs)})

    return Prepared(model.validator.predict(body), answer)


def prepare_infer(model: ModelVersion, body: Body) -> Prepared | None:
    """A V2 infer request's sequences and answer; None for a stream's chunk (`sequence_id`), which
    `infer` answers; raises the body's errors."""
    assert model.validator is not None and model.formatter is not None
    if sequence_parameters(body) is not None:
        return None
    formatter = model.formatter
    parsed = model.validator.v2(body, known_outputs=formatter.v2_output_names())

    def answer(outputs: list[np.ndarray]) -> Response:
        document: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
        if parsed.id is not None:
            document["id"] = parsed.id
        tensors = formatter.v2(outputs, parsed.outputs)
        if not parsed.binary_outputs:
            document["outputs"] = tensors
            return json_response(document)
        document["outputs"], chunks = v2_binary(tensors, parsed.binary_outputs)
        return binary_response(document, chunks)

    return Prepared(parsed.sequences, answer)


async def predict(request: Request, model: ModelVersion, body: Body) -> Response:
    """POST /predict and /v1/models/{name}[/versions/{version}]/predict."""
    prepared = prepare_predict(model, body)
    return prepared.answer(await run_model(request, model, prepared.sequences))


async def infer(request: Request, model: ModelVersion, body: Body) -> Response:
    """POST /v2/models/{name}[/versions/{version}]/infer: Open Inference Protocol inference."""
    prepared = prepare_infer(model, body)
    if prepared is None:
        sequence = sequence_parameters(body)
        assert sequence is not None
        return await v2_stream_chunk(request, model, body, sequence)
    return prepared.answer(await run_model(request, model, prepared.sequences))


async def run_model(request: Request, model: ModelVersion, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The model's raw output per sequence; raises Abandoned if the client leaves first."""
    assert model.batcher is not None
    timeout = app_state(request).settings.request_timeout_seconds
    gone: asyncio.Future[None] | None = request.scope.get(DISCONNECTED)  # set by seqserve's protocol (`wire`)
    if gone is not None:
        return await model.batcher.infer(sequences, timeout_seconds=timeout, gone=gone)
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        return await model.batcher.infer(sequences, timeout_seconds=timeout, gone=disconnected)
    finally:
        disconnected.cancel()


async def _wait_for_disconnect(request: Request) -> None:
    # NOTE: the body has been read, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
