"""Streams: one long sequence sent in chunks under a stream id, its recurrent state kept between chunks.

`StreamService.apply` is what every chunk does, whatever protocol it came by: find where the stream
stands, run the chunk through the version's stream batcher (batched with other streams' chunks, state
in and out per row), then commit the new state with a compare-and-set on the position it started from.
A chunk is applied exactly once or refused: a retried chunk that was already applied (its answer lost
with a replica) is answered from the answer cached with the stream; a chunk that does not start where
the stream stands is refused with 409 naming the step it expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInput, StreamConflict, StreamingUnsupported, StreamNotFound, VersionNotFound
from service.metrics import Metrics
from service.settings import Settings
from service.streams.store import MemoryStore, StateStore, StreamRecord, wall_clock

log = logging.getLogger(__name__)

MAX_STREAM_ID_CHARACTERS = 256


@dataclass(frozen=True)
class Chunk:
    """One validated chunk: its steps `[T, F]` float32 or `[T]` int64, and where it goes."""

    stream_id: str
    steps: np.ndarray
    start: bool
    end: bool
    offset: int | None
    """The step of the stream the chunk starts at; None: wherever the stream stands."""
    request_id: str = ""
    """Without an offset, how a retry is known: the same request id as the last applied chunk."""


@dataclass(frozen=True)
class ChunkAnswer:
    version: int
    stream_id: str
    offset: int
    """The step the chunk started at."""
    position: int
    """Steps applied so far, this chunk's included: the offset of the next chunk."""
    ended: bool
    output: np.ndarray
    """The raw output: `[O]` at the chunk's last step, or `[T, O]` per step."""
    replayed: bool
    """Answered from the stream's cache: this chunk had been applied already."""


class StreamModel:
    """What `apply` needs of a model version: its identity, its state size, whether it answers per step, and
    how to run one chunk (`service.streams.serving.VersionStream`: through the version's stream batcher)."""

    name: str
    version: int
    state_size: int
    per_step: bool

    async def run(self, steps: np.ndarray, state: np.ndarray, gone: asyncio.Future[Any] | None) -> np.ndarray:
        """The chunk's packed answer: `state_out [S]` then its output flattened."""
        raise NotImplementedError


def stream_id_of(value: Any, where: str) -> str:
    """A stream id as Triton's `sequence_id` allows it: a non-negative integer or a non-empty string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidInput(f"{where}: expected an integer or a string, got {type(value).__name__}")
    if isinstance(value, int):
        if value < 0 or value >= 1 << 64:
            raise InvalidInput(f"{where}: {value} is not an unsigned 64-bit integer")
        return str(value)
    if not value or len(value) > MAX_STREAM_ID_CHARACTERS or not value.isprintable():
        raise InvalidInput(f"{where}: expected 1 to {MAX_STREAM_ID_CHARACTERS} printable characters")
    return value


def offset_of(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{where}: expected a non-negative integer, got {value!r}")
    return value


class StreamService:
    def __init__(self, store: StateStore, metrics: Metrics, *, idle_seconds: float, refusal: str | None = None) -> None:
        self.store = store
        self._metrics = metrics
        self._idle_seconds = idle_seconds
        self._task: asyncio.Task[None] | None = None
        self.refusal = refusal
        """Why this server serves no stream at all (state in-process, several HTTP worker processes); None: it does."""

    def check_available(self) -> None:
        if self.refusal is not None:
            raise StreamingUnsupported(self.refusal)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics, *, forwarded: bool = False) -> StreamService:
        """The store the settings choose: Redis at `state_url`, else this process. `forwarded`: this is an HTTP
        process whose stream requests go to the process that holds the streams (`service.api.direct`); what cannot
        be forwarded is refused here."""
        retention = settings.stream_idle_seconds
        store: StateStore
        if settings.state_url is not None:
            from service.streams.redis import RedisStore

            store = RedisStore(
                settings.state_url.get_secret_value(),
                max_streams=settings.max_streams,
                idle_seconds=settings.stream_idle_seconds,
                retention_seconds=retention,
            )
        else:
            store = MemoryStore(
                max_streams=settings.max_streams, idle_seconds=settings.stream_idle_seconds, retention_seconds=retention
            )
        refusal = None
        if forwarded and settings.state_url is None:
            refusal = (
                "this server runs several HTTP processes and keeps stream state in the first one; this process "
                "forwards stream requests to it only with a Content-Length body (not chunked), so send one, or set "
                "SEQSERVE_STATE_URL (Redis) to serve streams from every process"
            )
        return cls(store, metrics, idle_seconds=settings.stream_idle_seconds, refusal=refusal)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the task that expires idle streams."""
        self._task = asyncio.get_running_loop().create_task(self._expire_forever(), name="expire-streams")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.store.close()

    async def _expire_forever(self) -> None:
        period = min(5.0, max(0.05, self._idle_seconds / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.expire_now()
            except Exception as exc:  # NOTE: Redis briefly away: try again next period
                log.warning("expiring idle streams failed: %s", exc)

    async def expire_now(self) -> None:
        expired = await self.store.expire_idle(wall_clock())
        if expired:
            self._metrics.streams_expired.inc(expired)
        self._metrics.streams_live.set(await self.store.live())

    # -- a chunk ---------------------------------------------------------------

    async def apply(
        self, model: StreamModel, chunk: Chunk, *, pinned: bool, version_of: Callable[[int], StreamModel]
    ) -> ChunkAnswer:
        """Apply `chunk` to its stream of `model` (the version the request resolved; `pinned` if it named
        it), or answer it from the cache if it was applied already, or refuse it."""
        self.check_available()
        key = f"{model.name}/{chunk.stream_id}"
        digest = _digest(chunk)
        now = wall_clock()
        record = await self.store.get(key)
        label = self._metrics.stream_chunks
        if chunk.start:
            if chunk.offset not in (None, 0):
                raise InvalidInput(
                    f"offset: a chunk that starts a stream starts at step 0, not {chunk.offset} "
                    "(offset in /v1, sequence_offset in V2)"
                )
            if record is not None and _is_retry(record, 0, digest) and record.status != "expired":
                label.labels(model.name, "replayed").inc()
                return self._cached(record, chunk, model)
            expect = (record.epoch, record.position) if record is not None and record.status == "live" else None
            state = np.zeros(model.state_size, dtype=np.float32)
            epoch, offset, runner = uuid.uuid4().hex, 0, model
        else:
            if record is None:
                raise StreamNotFound(
                    f"stream '{chunk.stream_id}' of model {model.name} does not exist: it was never started "
                    "(send its first chunk with sequence_start), or it ended or expired long ago"
                )
            offset = record.position if chunk.offset is None else chunk.offset
            if chunk.offset is None and chunk.request_id and chunk.request_id == record.last_request:
                offset = record.last_offset  # a retry of the last chunk, by its request id
            if _is_retry(record, offset, digest) and record.status != "expired":
                label.labels(model.name, "replayed").inc()
                return self._cached(record, chunk, model)
            if record.status == "ended":
                raise StreamNotFound(f"stream '{chunk.stream_id}' of model {model.name} has ended")
            if record.status == "expired" or now - record.touched >= self._idle_seconds:
                raise StreamNotFound(
                    f"stream '{chunk.stream_id}' of model {model.name} expired after "
                    f"{self._idle_seconds:g} s without a chunk (stream_idle_seconds)"
                )
            if offset != record.position:
                label.labels(model.name, "refused").inc()
                raise StreamConflict(
                    f"stream '{chunk.stream_id}' expects a chunk starting at step {record.position}; "
                    f"this chunk starts at step {offset}",
                    record.position,
                )
            runner = model
            if record.version != model.version:
                if pinned:
                    raise StreamConflict(
                        f"stream '{chunk.stream_id}' runs on version {record.version} of model {model.name}, "
                        f"not version {model.version}",
                        record.position,
                    )
                try:
                    runner = version_of(record.version)
                except VersionNotFound as exc:
                    raise StreamNotFound(
                        f"stream '{chunk.stream_id}' runs on version {record.version} of model {model.name}, "
                        f"which is no longer served ({exc.message})"
                    ) from None
            state = np.frombuffer(record.state, dtype=np.float32)
            expect, epoch = (record.epoch, record.position), record.epoch
        if len(state) != runner.state_size:
            raise StreamConflict(
                f"stream '{chunk.stream_id}' holds a state of {len(state)} values, not {runner.state_size}"
            )

        packed = await runner.run(chunk.steps, state, None)
        position = offset + len(chunk.steps)
        new = StreamRecord(
            model=model.name,
            version=runner.version,
            epoch=epoch,
            position=position,
            state=packed[: runner.state_size].tobytes(),
            touched=wall_clock(),
            last_offset=offset,
            last_digest=digest,
            last_answer=packed[runner.state_size :].tobytes(),
            status="ended" if chunk.end else "live",
            last_request=chunk.request_id,
        )
        if chunk.end:
            new = new.tombstone("ended", new.touched)
        if not await self.store.put(key, new, expect, now=new.touched):
            # Another request changed the stream meanwhile: a duplicate of this chunk that won, or not.
            winner = await self.store.get(key)
            if winner is not None and _is_retry(winner, offset, digest):
                label.labels(model.name, "replayed").inc()
                return self._cached(winner, chunk, model)
            expected = None if winner is None else winner.position
            label.labels(model.name, "refused").inc()
            raise StreamConflict(
                f"stream '{chunk.stream_id}' was changed by another request while this chunk ran "
                f"(it now expects step {expected}); nothing was applied",
                expected,
            )
        label.labels(model.name, "applied").inc()
        if chunk.start:
            self._metrics.streams_started.labels(model.name).inc()
        if chunk.end:
            self._metrics.streams_ended.labels(model.name).inc()
        if chunk.start or chunk.end:
            self._metrics.streams_live.set(await self.store.live())
        output = _shaped(packed[runner.state_size :], runner, len(chunk.steps))
        return ChunkAnswer(runner.version, chunk.stream_id, offset, position, chunk.end, output, False)

    async def end(self, model: str, stream_id: str) -> StreamRecord:
        """End a live stream without a chunk (its state is dropped); 404 if it is not live."""
        self.check_available()
        key = f"{model}/{stream_id}"
        record = await self.store.get(key)
        if record is None or record.status != "live":
            why = "does not exist" if record is None else f"has {record.status}"
            raise StreamNotFound(f"stream '{stream_id}' of model {model} {why}")
        now = wall_clock()
        if not await self.store.put(key, record.tombstone("ended", now), (record.epoch, record.position), now=now):
            raise StreamConflict(f"stream '{stream_id}' was changed by another request; try again", None)
        self._metrics.streams_ended.labels(model).inc()
        self._metrics.streams_live.set(await self.store.live())
        return record

    @staticmethod
    def _cached(record: StreamRecord, chunk: Chunk, model: StreamModel) -> ChunkAnswer:
        output = _shaped(np.frombuffer(record.last_answer, dtype=np.float32), model, len(chunk.steps))
        ended = record.status == "ended"
        return ChunkAnswer(record.version, chunk.stream_id, record.last_offset, record.position, ended, output, True)


def _shaped(flat: np.ndarray, model: StreamModel, length: int) -> np.ndarray:
    return flat.reshape(length, -1) if model.per_step else flat


def _is_retry(record: StreamRecord, offset: int, digest: bytes) -> bool:
    """Whether a chunk starting at `offset` with `digest` is the stream's last applied chunk."""
    return record.last_offset == offset and record.last_digest == digest and record.position > offset


def _digest(chunk: Chunk) -> bytes:
    hashed = hashlib.blake2b(digest_size=16)
    hashed.update(f"{chunk.steps.dtype.str}{chunk.steps.shape}{chunk.start:d}{chunk.end:d}".encode())
    hashed.update(np.ascontiguousarray(chunk.steps).tobytes())
    return hashed.digest()
