"""A stream client for tests, as a user writes one: send a long sequence in chunks, each naming where it
starts, retry a chunk whose answer was lost; and the check that every answer equals the user's module."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import tritonclient.http as triton

from tests.service.streams.graphs import StreamEntry

TOLERANCE = 1e-4


def chunk_body(steps: Any, *, start: bool = False, end: bool = False, offset: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"steps": steps, "start": start, "end": end}
    if offset is not None:
        body["offset"] = offset
    return body


def post_chunk(
    client: httpx.Client,
    model: str,
    stream: str,
    steps: Any,
    *,
    start: bool = False,
    end: bool = False,
    offset: int | None = None,
) -> httpx.Response:
    return client.post(
        f"/v1/models/{model}/streams/{stream}", json=chunk_body(steps, start=start, end=end, offset=offset)
    )


def random_sequence(entry: StreamEntry, length: int, rng: np.random.Generator) -> Any:
    """A sequence as the client sends it (steps of features, or text) and as the reference takes it."""
    if entry.features is None:
        return "".join(chr(ord("a") + int(i)) for i in rng.integers(0, entry.vocabulary - 2, length))
    return rng.normal(size=(length, entry.features)).round(4).tolist()


def reference_input(entry: StreamEntry, sequence: Any) -> Any:
    if entry.features is None:
        if entry.encode is not None:
            return entry.encode(sequence)
        return np.array([2 + ord(ch) - ord("a") for ch in sequence], dtype=np.int64)
    return np.asarray(sequence, dtype=np.float32)


def random_chunking(length: int, rng: np.random.Generator, largest: int, kind: int | None = None) -> list[int]:
    """Chunk sizes summing to `length`: sometimes one step at a time (kind 0), sometimes everything at once
    (kind 1, when it fits in `largest`), else cut at random (kinds 2, 3); `kind` None: drawn at random."""
    kind = int(rng.integers(0, 4)) if kind is None else kind
    if kind == 0:
        return [1] * length
    if kind == 1 and length <= largest:
        return [length]
    sizes: list[int] = []
    while sum(sizes) < length:
        sizes.append(int(min(rng.integers(1, largest + 1), length - sum(sizes))))
    return sizes


def raw_output(entry: StreamEntry, answer: dict[str, Any]) -> np.ndarray:
    """The model's answer from a /v1 output object: values, or probabilities (a model whose graph applies
    softmax needs a reference that does too)."""
    if entry.task == "regression":
        return np.asarray(answer["values"])
    return np.asarray(answer["probabilities"])


def expected_after(entry: StreamEntry, sequence: Any, stop: int, start: int) -> np.ndarray:
    """What the answer to the chunk covering steps [start, stop) must equal: the user's module on the
    sequence so far (last/pooled), or its outputs at those steps (per step)."""
    whole = entry.reference(reference_input(entry, sequence[:stop]))
    return whole[start:stop] if entry.per_step else whole


def wire_steps(entry: StreamEntry, steps: Any) -> tuple[Any, int]:
    """A chunk as sent and its length in steps: for a text model whose sequence is a list of words, the
    words joined by spaces (a word tokenizer's chunk); otherwise the steps, or the characters, as they are."""
    if entry.features is None and isinstance(steps, list):
        return " ".join(steps), len(steps)
    return steps, len(steps)


SendChunk = Callable[[str, Any, bool, bool, int], np.ndarray]
"""(stream id, steps, start, end, offset) -> the raw answer; raises on an error status."""


def chunk_difference(entry: StreamEntry, sequence: Any, offset: int, size: int, got: np.ndarray) -> float:
    """How far the answer to the chunk of `size` steps at `offset` is from the user's module's."""
    want = expected_after(entry, sequence, offset + size, offset)
    assert got.shape == want.shape, (entry.name, got.shape, want.shape)
    return float(np.abs(got - want).max())


def check_stream(entry: StreamEntry, send: SendChunk, stream: str, sequence: Any, sizes: Sequence[int]) -> float:
    """Send `sequence` in chunks of `sizes`, check each answer against the user's module; the worst difference."""
    worst, offset = 0.0, 0
    for i, size in enumerate(sizes):
        got = send(stream, sequence[offset : offset + size], i == 0, i == len(sizes) - 1, offset)
        worst = max(worst, chunk_difference(entry, sequence, offset, size, got))
        offset += size
    return worst


@dataclass(frozen=True)
class StreamJob:
    """One stream to send: its model, how its chunks go (a sender), its id, its sequence and chunk sizes."""

    entry: StreamEntry
    send: SendChunk
    stream: str
    sequence: Any
    sizes: Sequence[int]


def check_streams_in_rounds(jobs: Sequence[StreamJob], pool: concurrent.futures.Executor) -> dict[str, float]:
    """Send every stream's first chunk at once, then every second chunk, and so on (so that chunks of
    several streams of one model reach the server together and share batches); then check each answer
    against the user's module. The worst difference per stream id."""
    answers: list[list[np.ndarray]] = [[] for _ in jobs]
    offsets = [0] * len(jobs)

    def send(i: int, k: int) -> np.ndarray:
        job = jobs[i]
        size = job.sizes[k]
        return job.send(
            job.stream, job.sequence[offsets[i] : offsets[i] + size], k == 0, k == len(job.sizes) - 1, offsets[i]
        )

    for k in range(max(len(job.sizes) for job in jobs)):
        live = [i for i, job in enumerate(jobs) if k < len(job.sizes)]
        for i, got in zip(live, pool.map(send, live, [k] * len(live)), strict=True):
            answers[i].append(got)
            offsets[i] += jobs[i].sizes[k]
    worst: dict[str, float] = {}
    for job, got in zip(jobs, answers, strict=True):
        starts = np.cumsum([0, *job.sizes[:-1]])
        worst[job.stream] = max(
            chunk_difference(job.entry, job.sequence, int(offset), size, answer)
            for offset, size, answer in zip(starts, job.sizes, got, strict=True)
        )
    return worst


def v1_sender(client: httpx.Client, entry: StreamEntry) -> SendChunk:
    def send(stream: str, steps: Any, start: bool, end: bool, offset: int) -> np.ndarray:
        payload, length = wire_steps(entry, steps)
        response = post_chunk(client, entry.name, stream, payload, start=start, end=end, offset=offset)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["offset"], body["position"], body["ended"]) == (offset, offset + length, end), body
        return raw_output(entry, body["output"])

    return send


def triton_sender(client: triton.InferenceServerClient, entry: StreamEntry, *, binary: bool = False) -> SendChunk:
    """Chunks through tritonclient's V2 `infer` with Triton's sequence parameters (and seqserve's
    `sequence_offset`): steps as FP32 `input` [1, T, F], text as BYTES `text` [1]; the answer as JSON, or
    as binary data when `binary`."""
    name = "values" if entry.task == "regression" else "probabilities"

    def send(stream: str, steps: Any, start: bool, end: bool, offset: int) -> np.ndarray:
        if entry.features is None:
            text, length = wire_steps(entry, steps)
            tensor = triton.InferInput("text", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
        else:
            array = np.asarray([steps], dtype=np.float32)
            tensor = triton.InferInput("input", list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            length = array.shape[1]
        result = client.infer(
            entry.name,
            [tensor],
            sequence_id=stream,
            sequence_start=start,
            sequence_end=end,
            parameters={"sequence_offset": offset},
            outputs=[triton.InferRequestedOutput(name, binary_data=True)] if binary else None,
        )
        answer = result.get_response()
        assert answer["parameters"]["sequence_position"] == offset + length, answer
        output = result.as_numpy(name)
        assert output is not None
        return output[0]

    return send


def check_random_chunkings(
    base_url: str,
    entry: StreamEntry,
    *,
    streams: int = 4,
    longest: int = 40,
    largest_chunk: int = 16,
    seed: int = 0,
) -> float:
    """Send `streams` random sequences of `entry`'s model (1 to `longest` steps) to the server at `base_url`
    over /v1, each in a random chunking (one step at a time, all at once, or chunks of up to `largest_chunk`),
    checking every chunk's answer against `entry.reference` on the sequence so far; the worst difference."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    with httpx.Client(base_url=base_url, timeout=60) as client:
        send = v1_sender(client, entry)
        for i in range(streams):
            length = int(rng.integers(1, longest + 1))
            sequence = random_sequence(entry, length, rng)
            sizes = random_chunking(length, rng, largest=largest_chunk)
            worst = max(worst, check_stream(entry, send, f"check-{seed}-{i}", sequence, sizes))
    return worst
