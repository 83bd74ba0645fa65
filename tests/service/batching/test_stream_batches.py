"""Stream chunks through the batcher: each row's state goes in with its chunk and comes back with its answer,
padded next to chunks of other lengths, and a failing chunk fails only its own request."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import Batcher, BatchPolicy
from service.batching.worker import unpack_stream
from service.errors import InferenceFailed
from tests.fakes import FakeStreamRuntime


def batcher(runtime: FakeStreamRuntime) -> Batcher:
    policy = BatchPolicy(max_batch_size=32, max_batch_tokens=8192, max_delay_ms=20.0, max_queue=1024)
    return Batcher(runtime, policy, pad_value=0.0, dtype=np.float32, uses_lengths=True, name="s/1", stream=True)


def chunk(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None]


@pytest.mark.parametrize("per_step", [False, True])
def test_states_ride_with_their_rows(per_step: bool) -> None:
    runtime = FakeStreamRuntime(per_step=per_step)

    async def main() -> list[np.ndarray]:
        b = batcher(runtime)
        b.start()
        try:
            blocker = asyncio.ensure_future(b.infer([chunk([0.0])], timeout_seconds=30, states=[np.zeros(2)]))
            chunks = [chunk([1.0, 2.0, 3.0]), chunk([10.0]), chunk([5.0, 5.0])]
            states = [np.array([100.0, 7.0]), np.array([0.0, 0.0]), np.array([-4.0, 1.0])]
            answers = await asyncio.gather(
                *(b.infer([c], timeout_seconds=30, states=[s]) for c, s in zip(chunks, states, strict=True))
            )
            await blocker
            return [a[0] for a in answers]
        finally:
            await b.stop()

    packed = asyncio.run(main())
    assert max(len(call[0]) for call in runtime.calls) >= 2, "the chunks never shared a batch"
    expected_states = [[106.0, 10.0], [10.0, 1.0], [6.0, 3.0]]
    expected_steps = [[101.0, 103.0, 106.0], [10.0], [1.0, 6.0]]  # per step: only the chunk's own steps
    for answer, state_want, steps_want in zip(packed, expected_states, expected_steps, strict=True):
        state, output = unpack_stream(answer, 2)
        assert state.tolist() == state_want
        assert output.tolist() == (steps_want if per_step else state_want)


def test_a_failing_chunk_fails_only_its_request() -> None:
    runtime = FakeStreamRuntime(fail_if=lambda batch: bool((batch == 666).any()))

    async def main() -> tuple[list[np.ndarray] | BaseException, ...]:
        b = batcher(runtime)
        b.start()
        try:
            blocker = asyncio.ensure_future(b.infer([chunk([0.0])], timeout_seconds=30, states=[np.zeros(2)]))
            good = b.infer([chunk([1.0, 1.0])], timeout_seconds=30, states=[np.array([5.0, 2.0])])
            bad = b.infer([chunk([666.0])], timeout_seconds=30, states=[np.zeros(2)])
            results = await asyncio.gather(good, bad, return_exceptions=True)
            await blocker
            return tuple(results)
        finally:
            await b.stop()

    good, bad = asyncio.run(main())
    assert isinstance(bad, InferenceFailed)
    assert not isinstance(good, BaseException)
    assert unpack_stream(good[0], 2)[0].tolist() == [7.0, 4.0]  # its own state, after the retry one by one


def test_a_stream_batcher_needs_one_state_per_sequence() -> None:
    async def main() -> None:
        b = batcher(FakeStreamRuntime())
        b.start()
        try:
            with pytest.raises(ValueError):
                b.submit([chunk([1.0])], timeout_seconds=30)
        finally:
            await b.stop()

    asyncio.run(main())
