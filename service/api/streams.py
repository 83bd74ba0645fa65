"""Stream chunks at the HTTP edge: the `/v1` stream route and V2 infer with Triton's sequence parameters.

Both read a chunk into a `Chunk`, let `StreamService.apply` run it, and answer it in their protocol's
shape. `/v1`: `POST /v1/models/{name}/streams/{stream}` with `{"steps": ..., "start": bool, "end": bool,
"offset": int}`; `GET` tells where a stream stands, `DELETE` ends it. V2: `parameters.sequence_id`
(integer or string), `sequence_start`, `sequence_end` as tritonclient sends them, and `sequence_offset`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.body import Body
from service.api.responses import binary_response, json_response
from service.api.state import app_state
from service.errors import InvalidInput, StreamingUnsupported, StreamNotFound
from service.outputs import v2_binary
from service.registry import ModelVersion
from service.streams.service import Chunk, ChunkAnswer, StreamModel, offset_of, stream_id_of
from service.validation import describe

SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "sequence_offset")


class VersionStream(StreamModel):
    """A served model version as `StreamService.apply` runs it: chunks through its stream batcher."""

    def __init__(self, version: ModelVersion, timeout_seconds: float, gone: asyncio.Future[Any] | None) -> None:
        spec = version.spec
        if version.stream_batcher is None or spec is None or spec.streaming is None:
            raise StreamingUnsupported(_why_not(version))
        self.name, self.version = version.name, version.version
        self.state_size = spec.streaming.state_size
        self.per_step = spec.streaming.per_step or spec.task == "tagging"
        self._batcher = version.stream_batcher
        self._timeout_seconds = timeout_seconds
        self._gone = gone

    async def run(self, steps: np.ndarray, state: np.ndarray, gone: asyncio.Future[Any] | None) -> np.ndarray:
        outputs = await self._batcher.infer(
            [steps], timeout_seconds=self._timeout_seconds, gone=gone or self._gone, states=[state]
        )
        return outputs[0]


def _why_not(version: ModelVersion) -> str:
    where = f"model {version.name} version {version.version} cannot serve streams"
    architecture = getattr(version.spec, "architecture", None)
    if isinstance(architecture, dict) and architecture.get("bidirectional"):
        return f"{where}: it is bidirectional, and its backward direction needs the whole sequence; send it whole"
    return f"{where}: its model.json has no `streaming` section (export it again to stream); send sequences whole"


def sequence_parameters(body: Body) -> dict[str, Any] | None:
    """The request's Triton sequence parameters, when it names a stream (`sequence_id` not 0 or "")."""
    if b"sequence_id" not in body.raw:  # NOTE: most requests: no parse beyond the fast reader's
        return None
    document = body.document
    parameters = document.get("parameters") if isinstance(document, dict) else None
    if not isinstance(parameters, dict) or parameters.get("sequence_id") in (None, 0, ""):
        return None
    return parameters


def _flag(parameters: dict[str, Any], name: str, where: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{name}: expected a boolean, got {describe(value)}")
    return value


async def _apply(request: Request, model: ModelVersion, chunk: Chunk, pinned: bool) -> ChunkAnswer:
    state = app_state(request)
    timeout = state.settings.request_timeout_seconds
    registry = state.registry

    def version_of(number: int) -> StreamModel:
        return VersionStream(registry.resolve(model.name, number), timeout, None)

    return await state.streams.apply(VersionStream(model, timeout, None), chunk, pinned=pinned, version_of=version_of)


def _request_id(request: Request) -> str:
    """What identifies a request across retries: X-Request-ID, which nginx sets once per client request and
    sends unchanged on each try (V2's `id` is not used: clients reuse it)."""
    return request.headers.get("x-request-id", "")[:128]


def _pinned(request: Request) -> bool:
    return "version" in request.path_params or "/versions/" in request.url.path


async def v2_chunk(request: Request, model: ModelVersion, body: Body, parameters: dict[str, Any]) -> Response:
    """V2 infer for one chunk of a stream: a batch of exactly one sequence."""
    assert model.validator is not None and model.formatter is not None
    if model.stream_batcher is None:
        raise StreamingUnsupported(_why_not(model))
    parsed = model.validator.v2(body, known_outputs=model.formatter.v2_output_names())
    if len(parsed.sequences) != 1:
        raise InvalidInput(f"inputs: a stream chunk is a batch of one sequence, got {len(parsed.sequences)}")
    chunk = Chunk(
        stream_id=stream_id_of(parameters["sequence_id"], "parameters.sequence_id"),
        steps=parsed.sequences[0],
        start=_flag(parameters, "sequence_start", "parameters"),
        end=_flag(parameters, "sequence_end", "parameters"),
        offset=offset_of(parameters.get("sequence_offset"), "parameters.sequence_offset"),
        request_id=_request_id(request),
    )
    answer = await _apply(request, model, chunk, _pinned(request))
    result: dict[str, Any] = {"model_name": model.name, "model_version": str(answer.version)}
    if parsed.id is not None:
        result["id"] = parsed.id
    result["parameters"] = {
        "sequence_id": parameters["sequence_id"],
        "sequence_offset": answer.offset,
        "sequence_position": answer.position,
        "sequence_end": answer.ended,
        "replayed": answer.replayed,
    }
    tensors = model.formatter.v2([answer.output], parsed.outputs)
    if not parsed.binary_outputs:
        result["outputs"] = tensors
        return json_response(result)
    result["outputs"], chunks = v2_binary(tensors, parsed.binary_outputs)
    return binary_response(result, chunks)


async def v1_chunk(request: Request, model: ModelVersion, body: Body) -> Response:
    """POST /v1/models/{name}[/versions/{version}]/streams/{stream}: one chunk of a stream."""
    assert model.validator is not None and model.formatter is not None
    if model.stream_batcher is None:
        raise StreamingUnsupported(_why_not(model))
    document = body.document
    if not isinstance(document, dict):
        raise InvalidInput(f"body: expected a JSON object with 'steps', got {describe(document)}")
    unknown = sorted(set(document) - {"steps", "start", "end", "offset"})
    if unknown:
        raise InvalidInput(f"{unknown[0]}: unknown field; a chunk has steps, start, end and offset")
    if "steps" not in document:
        raise InvalidInput("steps: field required")
    chunk = Chunk(
        stream_id=stream_id_of(request.path_params.get("stream", ""), "stream id"),
        steps=model.validator.sequence(document["steps"], "steps"),
        start=_flag(document, "start", "body"),
        end=_flag(document, "end", "body"),
        offset=offset_of(document.get("offset"), "offset"),
        request_id=_request_id(request),
    )
    answer = await _apply(request, model, chunk, _pinned(request))
    [output] = model.formatter.predict([answer.output])
    return json_response(
        {
            "model": model.name,
            "version": answer.version,
            "stream": answer.stream_id,
            "offset": answer.offset,
            "position": answer.position,
            "ended": answer.ended,
            "replayed": answer.replayed,
            "output": output,
        }
    )


router = APIRouter(tags=["streams"])


@router.get("/v1/models/{name}/streams/{stream}", summary="Where a stream stands")
async def stream_status(request: Request, name: str, stream: str) -> Response:
    state = app_state(request)
    state.registry.model_versions(name)  # 404 for an unknown model
    record = await state.streams.store.get(f"{name}/{stream_id_of(stream, 'stream id')}")
    if record is None:
        raise StreamNotFound(f"stream '{stream}' of model {name} does not exist")
    return json_response(
        {
            "model": name,
            "version": record.version,
            "stream": stream,
            "status": record.status,
            "position": record.position,
            "last_offset": record.last_offset,
        }
    )


@router.delete("/v1/models/{name}/streams/{stream}", summary="End a stream without a chunk")
async def end_stream(request: Request, name: str, stream: str) -> Response:
    state = app_state(request)
    state.registry.model_versions(name)
    record = await state.streams.end(name, stream_id_of(stream, "stream id"))
    return json_response({"model": name, "stream": stream, "status": "ended", "position": record.position})
