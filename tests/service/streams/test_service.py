"""`StreamService.apply` over the in-process store with a model that keeps a running sum: a chunk is
applied once or refused, whatever arrives twice, late, early or at the same time."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from service.errors import StreamConflict, StreamNotFound
from service.metrics import Metrics
from service.streams.service import Chunk, StreamModel, StreamService
from service.streams.store import MemoryStore


class RunningSum(StreamModel):
    """State [sum]; the answer is the sum so far. `gate` holds every run until it is set."""

    def __init__(self, version: int = 1, gate: asyncio.Event | None = None) -> None:
        self.name, self.version, self.state_size, self.per_step = "m", version, 1, False
        self.gate = gate
        self.runs = 0

    async def run(self, steps: np.ndarray, state: np.ndarray, gone: asyncio.Future[Any] | None) -> np.ndarray:
        self.runs += 1
        if self.gate is not None:
            await self.gate.wait()
        total = np.float32(state[0] + steps.sum())
        return np.array([total, total], dtype=np.float32)


def service() -> StreamService:
    return StreamService(MemoryStore(max_streams=10, idle_seconds=60, retention_seconds=60), Metrics(), idle_seconds=60)


def chunk(values: list[float], offset: int | None, *, start: bool = False, end: bool = False) -> Chunk:
    return Chunk("s", np.asarray(values, dtype=np.float32)[:, None], start, end, offset)


def test_the_same_chunk_at_the_same_time_is_applied_once() -> None:
    async def main() -> None:
        streams, model = service(), RunningSum()
        await streams.apply(model, chunk([1.0], 0, start=True), pinned=False, version_of=lambda v: model)
        model.gate = asyncio.Event()
        twins = [
            asyncio.ensure_future(streams.apply(model, chunk([2.0, 3.0], 1), pinned=False, version_of=lambda v: model))
            for _ in range(2)
        ]
        await asyncio.sleep(0.01)
        model.gate.set()
        answers = await asyncio.gather(*twins)
        assert [a.output.tolist() for a in answers] == [[6.0], [6.0]]
        assert sorted(a.replayed for a in answers) == [False, True]
        after = await streams.apply(model, chunk([4.0], 3), pinned=False, version_of=lambda v: model)
        assert after.output.tolist() == [10.0]  # 1 + 2 + 3 + 4: the twin chunk counted once

    asyncio.run(main())


def test_a_different_chunk_racing_for_the_same_step_is_refused() -> None:
    async def main() -> None:
        streams, model = service(), RunningSum()
        await streams.apply(model, chunk([1.0], 0, start=True), pinned=False, version_of=lambda v: model)
        model.gate = asyncio.Event()
        first = asyncio.ensure_future(streams.apply(model, chunk([2.0], 1), pinned=False, version_of=lambda v: model))
        other = asyncio.ensure_future(streams.apply(model, chunk([9.0], 1), pinned=False, version_of=lambda v: model))
        await asyncio.sleep(0.01)
        model.gate.set()
        results = await asyncio.gather(first, other, return_exceptions=True)
        assert sum(isinstance(r, StreamConflict) for r in results) == 1
        winner = next(r for r in results if not isinstance(r, BaseException))
        status = await streams.store.get("m/s")
        assert status is not None and status.position == 2
        assert np.frombuffer(status.state, dtype=np.float32).tolist() == winner.output.tolist()

    asyncio.run(main())


def test_a_restart_never_takes_a_late_commit_of_the_previous_run() -> None:
    async def main() -> None:
        streams, model = service(), RunningSum()
        await streams.apply(model, chunk([1.0], 0, start=True), pinned=False, version_of=lambda v: model)
        model.gate = asyncio.Event()
        late = asyncio.ensure_future(streams.apply(model, chunk([2.0], 1), pinned=False, version_of=lambda v: model))
        await asyncio.sleep(0.01)
        fresh = RunningSum()
        restarted = await streams.apply(fresh, chunk([50.0], 0, start=True), pinned=False, version_of=lambda v: fresh)
        assert restarted.output.tolist() == [50.0]
        model.gate.set()
        with pytest.raises(StreamConflict):
            await late
        nxt = await streams.apply(fresh, chunk([1.0], 1), pinned=False, version_of=lambda v: fresh)
        assert nxt.output.tolist() == [51.0]

    asyncio.run(main())


def test_a_stream_keeps_its_version() -> None:
    async def main() -> None:
        streams, v1, v2 = service(), RunningSum(1), RunningSum(2)
        versions = {1: v1, 2: v2}
        await streams.apply(v1, chunk([1.0], 0, start=True), pinned=False, version_of=versions.__getitem__)
        later = await streams.apply(v2, chunk([2.0], 1), pinned=False, version_of=versions.__getitem__)
        assert later.version == 1 and later.output.tolist() == [3.0] and v2.runs == 0
        with pytest.raises(StreamConflict, match="version 1"):
            await streams.apply(v2, chunk([3.0], 2), pinned=True, version_of=versions.__getitem__)
        unknown = Chunk("never", np.ones((1, 1), dtype=np.float32), False, False, 0)
        with pytest.raises(StreamNotFound, match="never"):
            await streams.apply(v1, unknown, pinned=False, version_of=versions.__getitem__)

    asyncio.run(main())


def test_a_forwarding_process_refuses_what_it_cannot_forward_naming_the_setting() -> None:
    """With several HTTP processes and no Redis, the first holds the streams and the others forward to it; a
    stream request one of them cannot forward (a chunked body) is refused, naming the way out."""
    from service.errors import StreamingUnsupported
    from service.settings import Settings

    async def main() -> None:
        holder = StreamService.from_settings(Settings(http_workers=2), Metrics())
        assert holder.refusal is None
        forwarding = StreamService.from_settings(Settings(http_workers=2), Metrics(), forwarded=True)
        model = RunningSum()
        with pytest.raises(StreamingUnsupported, match="SEQSERVE_STATE_URL"):
            await forwarding.apply(model, chunk([1.0], 0, start=True), pinned=False, version_of=lambda v: model)
        with pytest.raises(StreamingUnsupported, match="Content-Length"):
            await forwarding.end("m", "s")
        settings = Settings(http_workers=2, state_url="redis://127.0.0.1:1/0")
        assert StreamService.from_settings(settings, Metrics(), forwarded=True).refusal is None

    asyncio.run(main())
