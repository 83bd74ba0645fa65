"""Stream chunks at the HTTP edge: the `/v1` stream routes and V2 infer with Triton's sequence parameters.

`/v1`: `POST /v1/models/{name}/streams/{stream}` with `{"steps": ..., "start": bool, "end": bool,
"offset": int}`; `GET` tells where a stream stands, `DELETE` ends it. V2: `parameters.sequence_id`
(integer or string), `sequence_start`, `sequence_end` as tritonclient sends them, and `sequence_offset`.
Both read the chunk and answer it in their protocol's shape; `service.streams` does the rest.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.responses import Response

from service.api import schemas
from service.api.body import Body
from service.api.responses import binary_response, json_response
from service.api.state import app_state
from service.errors import InvalidInput, StreamingUnsupported, StreamNotFound
from service.outputs import v2_binary
from service.registry import ModelVersion
from service.streams.service import Chunk, ChunkAnswer, offset_of, stream_id_of
from service.streams.serving import apply_chunk, names_a_stream, v2_answer_parameters, v2_chunk, why_not
from service.validation import describe


def sequence_parameters(body: Body) -> dict[str, Any] | None:
    """The request's Triton sequence parameters, when it names a stream."""
    if b"sequence_id" not in body.raw:  # NOTE: most requests: no parse beyond the fast reader's
        return None
    document = body.document
    parameters = document.get("parameters") if isinstance(document, dict) else None
    return parameters if names_a_stream(parameters) else None


def _request_id(request: Request) -> str:
    """What identifies a request across retries: X-Request-ID, which nginx sets once per client request and
    sends unchanged on each try (V2's `id` is not used: clients reuse it)."""
    return request.headers.get("x-request-id", "")


def _pinned(request: Request) -> bool:
    return "/versions/" in request.url.path


async def _apply(request: Request, model: ModelVersion, chunk: Chunk) -> ChunkAnswer:
    state = app_state(request)
    return await apply_chunk(
        state.streams,
        state.registry,
        model,
        chunk,
        pinned=_pinned(request),
        timeout_seconds=state.settings.request_timeout_seconds,
    )


async def v2_stream_chunk(request: Request, model: ModelVersion, body: Body, parameters: dict[str, Any]) -> Response:
    """V2 infer for one chunk of a stream."""
    assert model.validator is not None and model.formatter is not None
    if model.stream_batcher is None:
        raise StreamingUnsupported(why_not(model))
    parsed = model.validator.v2(body, known_outputs=model.formatter.v2_output_names())
    answer = await _apply(request, model, v2_chunk(parameters, parsed.sequences, _request_id(request)))
    result: dict[str, Any] = {"model_name": model.name, "model_version": str(answer.version)}
    if parsed.id is not None:
        result["id"] = parsed.id
    result["parameters"] = v2_answer_parameters(parameters, answer)
    tensors = model.formatter.v2([answer.output], parsed.outputs)
    if not parsed.binary_outputs:
        result["outputs"] = tensors
        return json_response(result)
    result["outputs"], chunks = v2_binary(tensors, parsed.binary_outputs)
    return binary_response(result, chunks)


def _flag(document: dict[str, Any], name: str) -> bool:
    value = document.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name}: expected a boolean, got {describe(value)}")
    return value


async def v1_chunk(request: Request, model: ModelVersion, body: Body) -> Response:
    """POST /v1/models/{name}[/versions/{version}]/streams/{stream}: one chunk of a stream."""
    assert model.validator is not None and model.formatter is not None
    if model.stream_batcher is None:
        raise StreamingUnsupported(why_not(model))
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
        start=_flag(document, "start"),
        end=_flag(document, "end"),
        offset=offset_of(document.get("offset"), "offset"),
        request_id=_request_id(request)[:128],
    )
    answer = await _apply(request, model, chunk)
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


@router.get(
    "/v1/models/{name}/streams/{stream}",
    summary="Where a stream stands",
    response_model=schemas.StreamStatus,
    responses=schemas.errors(401, 404, 500),
)
async def stream_status(request: Request, name: str, stream: str) -> Response:
    state = app_state(request)
    state.registry.model_versions(name)  # 404 for an unknown model
    state.streams.check_available()
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


@router.delete(
    "/v1/models/{name}/streams/{stream}",
    summary="End a stream without a chunk",
    response_model=schemas.StreamStatus,
    responses=schemas.errors(401, 404, 409, 500, 503),
)
async def end_stream(request: Request, name: str, stream: str) -> Response:
    state = app_state(request)
    state.registry.model_versions(name)
    record = await state.streams.end(name, stream_id_of(stream, "stream id"))
    return json_response(
        {
            "model": name,
            "version": record.version,
            "stream": stream,
            "status": "ended",
            "position": record.position,
            "last_offset": record.last_offset,
        }
    )


@router.api_route("/v1/models/{name}/streams/{stream}", methods=["PUT", "PATCH", "OPTIONS"], include_in_schema=False)
async def _not_allowed() -> Response:
    # NOTE: POST (the inference route table), GET and DELETE are routes of their own; without this one, the
    # 405 for another method would name only the first route's method in `Allow` (as service.api.repository).
    raise HTTPException(405, headers={"Allow": "DELETE, GET, POST"})
