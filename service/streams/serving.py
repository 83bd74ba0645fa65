"""What both edges (HTTP and gRPC) do with a stream chunk once it is read: turn Triton's sequence
parameters into a `Chunk`, and apply it to a served model version through its stream batcher."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import InvalidInput, StreamingUnsupported
from service.registry import ModelRegistry, ModelVersion
from service.streams.service import Chunk, ChunkAnswer, StreamModel, StreamService, offset_of, stream_id_of
from service.validation import describe

SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "sequence_offset")
"""Triton's sequence parameters, and seqserve's `sequence_offset`: the step the chunk starts at."""


class VersionStream(StreamModel):
    """A served model version as `StreamService.apply` runs it: chunks through its stream batcher."""

    def __init__(self, version: ModelVersion, timeout_seconds: float, gone: asyncio.Future[Any] | None) -> None:
        spec = version.spec
        if version.stream_batcher is None or spec is None or spec.streaming is None:
            raise StreamingUnsupported(why_not(version))
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


def why_not(version: ModelVersion) -> str:
    """Why `version` serves no streams, for the client."""
    where = f"model {version.name} version {version.version} cannot serve streams"
    architecture = getattr(version.spec, "architecture", None)
    if isinstance(architecture, dict) and architecture.get("bidirectional"):
        return f"{where}: it is bidirectional, and its backward direction needs the whole sequence; send it whole"
    return f"{where}: its model.json has no `streaming` section (export it again to stream); send sequences whole"


def names_a_stream(parameters: Any) -> bool:
    """Whether V2 request parameters name a stream: Triton's `sequence_id`, not 0 or ""."""
    return isinstance(parameters, dict) and parameters.get("sequence_id") not in (None, 0, "")


def _flag(parameters: dict[str, Any], name: str, where: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{name}: expected a boolean, got {describe(value)}")
    return value


def v2_chunk(parameters: dict[str, Any], sequences: Sequence[np.ndarray], request_id: str) -> Chunk:
    """The chunk of a V2 request naming a stream: a batch of exactly one sequence."""
    if len(sequences) != 1:
        raise InvalidInput(f"inputs: a stream chunk is a batch of one sequence, got {len(sequences)}")
    return Chunk(
        stream_id=stream_id_of(parameters["sequence_id"], "parameters.sequence_id"),
        steps=sequences[0],
        start=_flag(parameters, "sequence_start", "parameters"),
        end=_flag(parameters, "sequence_end", "parameters"),
        offset=offset_of(parameters.get("sequence_offset"), "parameters.sequence_offset"),
        request_id=request_id[:128],
    )


def v2_answer_parameters(parameters: dict[str, Any], answer: ChunkAnswer) -> dict[str, Any]:
    """The answer's parameters: where the stream stands now."""
    return {
        "sequence_id": parameters["sequence_id"],
        "sequence_offset": answer.offset,
        "sequence_position": answer.position,
        "sequence_end": answer.ended,
        "replayed": answer.replayed,
    }


async def apply_chunk(
    streams: StreamService,
    registry: ModelRegistry,
    model: ModelVersion,
    chunk: Chunk,
    *,
    pinned: bool,
    timeout_seconds: float,
    gone: asyncio.Future[Any] | None = None,
) -> ChunkAnswer:
    """Apply `chunk` on `model` (the version the request resolved; `pinned` if it named it). A stream keeps
    the version it started on: a later chunk that names no version runs there."""

    def version_of(number: int) -> StreamModel:
        return VersionStream(registry.resolve(model.name, number), timeout_seconds, gone)

    return await streams.apply(VersionStream(model, timeout_seconds, gone), chunk, pinned=pinned, version_of=version_of)
