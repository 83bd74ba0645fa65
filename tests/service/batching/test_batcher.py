"""The batcher through its public seam, `submit()` / `infer()`, over a recording fake runtime."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest

from service.batching import Batcher, BatchPolicy
from service.errors import Draining, InferenceFailed, Overloaded, PayloadTooLarge, RequestTimeout
from tests.fakes import FakeRuntime, RecordingObserver

T = TypeVar("T")
TIMEOUT = 60.0  # no answer may take this long; a hang fails instead of blocking the suite


def policy(**overrides: Any) -> BatchPolicy:
    fields: dict[str, Any] = {"max_batch_size": 32, "max_batch_tokens": 8192, "max_delay_ms": 2.0, "max_queue": 1024}
    fields.update(overrides)
    return BatchPolicy(**fields)


def make(runtime: FakeRuntime, observer: RecordingObserver | None = None, **overrides: Any) -> Batcher:
    equal = overrides.pop("equal_length", False)
    nice = overrides.pop("compute_nice", 0)
    workers = overrides.pop("workers", 1)
    return Batcher(
        runtime,
        policy(equal_length=equal, **overrides),
        pad_value=overrides.pop("pad_value", 0.0) if "pad_value" in overrides else 0.0,
        dtype=np.float32,
        uses_lengths=not equal,
        observer=observer,
        name="fake/1",
        compute_nice=nice,
        workers=workers,
    )


def run(test: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(test(), TIMEOUT)

    return asyncio.run(bounded())


def seq(length: int, value: float = 1.0, features: int = 2) -> np.ndarray:
    return np.full((length, features), value, dtype=np.float32)


async def wait_for_thread(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, TIMEOUT)


def test_a_request_gets_one_output_per_sequence_in_order() -> None:
    runtime = FakeRuntime()

    async def scenario() -> list[np.ndarray]:
        batcher = make(runtime)
        batcher.start()
        try:
            return await batcher.infer([seq(3, 1.0), seq(1, 2.0), seq(5, 0.5)], timeout_seconds=TIMEOUT)
        finally:
            await batcher.stop()

    outputs = run(scenario)
    # [sum of valid cells, length]: exact only if padding was masked by lengths.
    assert [o.tolist() for o in outputs] == [[6.0, 3.0], [4.0, 1.0], [5.0, 5.0]]
    [(batch, lengths)] = runtime.calls
    assert batch.shape == (3, 5, 2) and lengths is not None and lengths.tolist() == [3, 1, 5]
    assert (batch[1, 1:] == 0).all(), "padding is zeros"


def test_requests_that_arrive_while_a_batch_computes_are_batched_together() -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)

    async def scenario() -> list[list[np.ndarray]]:
        batcher = make(runtime)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.infer([seq(2)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.started)  # the idle model took the first request at once
            others = [
                asyncio.ensure_future(batcher.infer([seq(n, float(n))], timeout_seconds=TIMEOUT))
                for n in (4, 2, 3, 4, 1)
            ]
            await asyncio.sleep(0)
            gate.set()
            return [await first, *[await o for o in others]]
        finally:
            await batcher.stop()

    answers = run(scenario)
    assert runtime.batch_sizes == [1, 5]
    assert [a[0].tolist() for a in answers[1:]] == [[32.0, 4.0], [8.0, 2.0], [18.0, 3.0], [32.0, 4.0], [2.0, 1.0]]


class HeldRuntime(FakeRuntime):
    """Holds a batch whose first value is a key of `holds` until that event is set, then computes
    its answer from the padded input it was given (so a buffer reused under it shows)."""

    def __init__(self, holds: dict[float, threading.Event]) -> None:
        super().__init__()
        self.holds = holds
        self.entered = {value: threading.Event() for value in holds}

    def predict(self, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        value = float(batch.flat[0])
        if value in self.holds:
            self.entered[value].set()
            assert self.holds[value].wait(timeout=30), "test hold never released"
        return super().predict(batch, lengths)


def test_with_two_workers_a_batch_runs_while_another_computes_each_in_its_own_buffer() -> None:
    release = threading.Event()
    runtime = HeldRuntime({1.0: release})

    async def scenario() -> tuple[list[np.ndarray], list[np.ndarray]]:
        batcher = make(runtime, workers=2)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.infer([seq(3, 1.0)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.entered[1.0])
            # The second worker takes the next request while the first batch is held,
            # padding it into a buffer of its own: the held batch's input stays intact.
            second = await asyncio.wait_for(batcher.infer([seq(2, 2.0)], timeout_seconds=TIMEOUT), 10)
            assert not first.done()
            release.set()
            return await first, second
        finally:
            release.set()
            await batcher.stop()

    first, second = run(scenario)
    assert second[0].tolist() == [8.0, 2.0]
    assert first[0].tolist() == [6.0, 3.0]
    assert runtime.batch_sizes == [1, 1]


def test_with_one_worker_the_next_batch_waits_for_the_running_one() -> None:
    release = threading.Event()
    runtime = HeldRuntime({1.0: release})

    async def scenario() -> None:
        batcher = make(runtime, workers=1)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.infer([seq(3, 1.0)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.entered[1.0])
            second = asyncio.ensure_future(batcher.infer([seq(5, 2.0)], timeout_seconds=TIMEOUT))
            await asyncio.sleep(0.2)
            assert len(runtime.calls) == 0 and not second.done()
            release.set()
            assert (await second)[0].tolist() == [20.0, 5.0] and (await first)[0].tolist() == [6.0, 3.0]
        finally:
            release.set()
            await batcher.stop()

    run(scenario)


def test_sequences_waiting_for_several_free_workers_are_spread_over_them() -> None:
    runtime = FakeRuntime()

    async def scenario() -> list[np.ndarray]:
        batcher = make(runtime, workers=2)
        batcher.start()
        try:
            return await batcher.infer([seq(3, float(n)) for n in range(1, 6)], timeout_seconds=TIMEOUT)
        finally:
            await batcher.stop()

    outputs = run(scenario)
    assert [o.tolist() for o in outputs] == [[6.0 * n, 3.0] for n in range(1, 6)]
    assert sorted(runtime.batch_sizes) == [2, 3]  # five sequences, two free workers: not one batch of five


def test_a_batch_queued_behind_busy_workers_takes_one_workers_share() -> None:
    release = threading.Event()
    runtime = HeldRuntime({1.0: release, 2.0: release})

    async def scenario() -> list[np.ndarray]:
        batcher = make(runtime, workers=2, max_batch_size=8)
        batcher.start()
        try:
            busy = [asyncio.ensure_future(batcher.infer([seq(2, v)], timeout_seconds=TIMEOUT)) for v in (1.0, 2.0)]
            await wait_for_thread(runtime.entered[1.0])
            await wait_for_thread(runtime.entered[2.0])
            # Both workers busy; 8 sequences wait, a full batch: the one queued behind takes 4 of them.
            waiting = asyncio.ensure_future(batcher.infer([seq(3, 3.0)] * 8, timeout_seconds=TIMEOUT))
            await asyncio.sleep(0.1)
            release.set()
            await asyncio.gather(*busy)
            return await waiting
        finally:
            release.set()
            await batcher.stop()

    outputs = run(scenario)
    assert [o.tolist() for o in outputs] == [[18.0, 3.0]] * 8
    sizes = sorted(runtime.batch_sizes)
    assert sizes[:2] == [1, 1] and sum(sizes[2:]) == 8 and max(sizes) == 4  # never all 8 on one core


def test_an_idle_model_does_not_wait_for_company() -> None:
    runtime = FakeRuntime()

    async def scenario() -> None:
        batcher = make(runtime, max_delay_ms=3_600_000)  # an hour: a hold would time the test out
        batcher.start()
        try:
            await batcher.infer([seq(2)], timeout_seconds=TIMEOUT)
            await batcher.infer([seq(3)], timeout_seconds=TIMEOUT)
        finally:
            await batcher.stop()

    run(scenario)
    assert runtime.batch_sizes == [1, 1]


def test_a_request_is_split_across_batches_and_gathered_in_order() -> None:
    runtime = FakeRuntime()

    async def scenario() -> list[np.ndarray]:
        batcher = make(runtime, max_batch_size=2)
        batcher.start()
        try:
            return await batcher.infer([seq(n, float(n)) for n in (1, 2, 3, 4, 5)], timeout_seconds=TIMEOUT)
        finally:
            await batcher.stop()

    outputs = run(scenario)
    assert max(runtime.batch_sizes) == 2 and sum(runtime.batch_sizes) == 5
    assert [o[1] for o in outputs] == [1, 2, 3, 4, 5]


def test_token_budget_limits_padded_cells_per_batch() -> None:
    runtime = FakeRuntime()

    async def scenario() -> None:
        batcher = make(runtime, max_batch_tokens=10)
        batcher.start()
        try:
            await batcher.infer([seq(5) for _ in range(5)], timeout_seconds=TIMEOUT)
        finally:
            await batcher.stop()

    run(scenario)
    assert all(batch.shape[0] * batch.shape[1] <= 10 for batch, _ in runtime.calls)
    assert sum(runtime.batch_sizes) == 5


def test_equal_length_graphs_get_batches_of_one_length_without_lengths() -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)

    async def scenario() -> list[list[np.ndarray]]:
        batcher = make(runtime, equal_length=True)
        batcher.start()
        try:
            blocker = asyncio.ensure_future(batcher.infer([seq(1)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.started)
            mixed = [
                asyncio.ensure_future(batcher.infer([seq(n, 1.0)], timeout_seconds=TIMEOUT)) for n in (3, 5, 3, 5, 2)
            ]
            await asyncio.sleep(0)
            gate.set()
            await blocker
            return [await m for m in mixed]
        finally:
            await batcher.stop()

    answers = run(scenario)
    for batch, lengths in runtime.calls:
        assert lengths is None
        assert (batch != 0).all(), "equal lengths: no padding at all"
    assert [a[0].tolist() for a in answers] == [[6.0, 3.0], [10.0, 5.0], [6.0, 3.0], [10.0, 5.0], [4.0, 2.0]]
    assert sorted(runtime.batch_sizes) == [1, 1, 2, 2]


def test_a_full_queue_refuses_at_once() -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)

    async def scenario() -> None:
        batcher = make(runtime, max_queue=3)
        batcher.start()
        try:
            running = asyncio.ensure_future(batcher.infer([seq(1)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.started)
            queued = batcher.submit([seq(1), seq(1)], timeout_seconds=TIMEOUT)
            with pytest.raises(Overloaded):
                batcher.submit([seq(1), seq(1)], timeout_seconds=TIMEOUT)
            batcher.submit([seq(1)], timeout_seconds=TIMEOUT)  # still room for one
            gate.set()
            await running
            await queued.future
        finally:
            await batcher.stop()

    run(scenario)


def test_queued_time_steps_are_bounded_and_freed_on_dispatch() -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)

    async def scenario() -> None:
        batcher = make(runtime, max_queued_tokens=100)
        batcher.start()
        try:
            running = asyncio.ensure_future(batcher.infer([seq(100)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.started)  # dispatched: its 100 steps left the queue
            queued = batcher.submit([seq(60), seq(30)], timeout_seconds=TIMEOUT)
            with pytest.raises(Overloaded, match="90 time steps queued"):
                batcher.submit([seq(11)], timeout_seconds=TIMEOUT)
            last = batcher.submit([seq(10)], timeout_seconds=TIMEOUT)  # exactly at the limit
            with pytest.raises(PayloadTooLarge, match="101 time steps"):
                batcher.submit([seq(50), seq(51)], timeout_seconds=TIMEOUT)  # could never fit
            gate.set()
            await running
            await queued.future
            await last.future
            assert len(await batcher.infer([seq(100)], timeout_seconds=TIMEOUT)) == 1  # all freed
        finally:
            await batcher.stop()

    run(scenario)


def test_dropped_requests_free_their_queued_time_steps() -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)

    async def scenario() -> None:
        batcher = make(runtime, max_queued_tokens=100)
        batcher.start()
        try:
            running = asyncio.ensure_future(batcher.infer([seq(5)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.started)
            abandoned = batcher.submit([seq(100)], timeout_seconds=TIMEOUT)
            with pytest.raises(Overloaded):
                batcher.submit([seq(1)], timeout_seconds=TIMEOUT)
            abandoned.cancel()
            for _ in range(100):  # the task drops it on its next wake-up
                await asyncio.sleep(0.01)
                try:
                    kept = batcher.submit([seq(100)], timeout_seconds=TIMEOUT)
                    break
                except Overloaded:
                    continue
            else:
                raise AssertionError("a cancelled request's time steps were never freed")
            gate.set()
            await running
            await kept.future
        finally:
            await batcher.stop()

    run(scenario)


def test_requests_are_shed_before_their_bodies_are_read_when_the_queue_would_overflow() -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)

    async def scenario() -> None:
        batcher = make(runtime, max_queue=8)
        batcher.start()
        try:
            with batcher.reading():  # an idle model always reads a request
                running = asyncio.ensure_future(batcher.infer([seq(1)] * 4, timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.started)
            queued = batcher.submit([seq(1)] * 4, timeout_seconds=TIMEOUT)  # mean request: about 4 sequences
            # 4 queued + 1 request of ~4 being read fits 8; a second one being read would not
            with (
                batcher.reading(),
                pytest.raises(Overloaded, match=r"4 sequences queued \(limit 8\) and 1 requests being read"),
                batcher.reading(),
            ):
                pass
            with batcher.reading():  # the first reader finished: room again
                pass
            gate.set()
            await running
            await queued.future
            batcher.begin_drain()
            with pytest.raises(Draining), batcher.reading():
                pass
        finally:
            await batcher.stop()

    run(scenario)


def test_the_worker_thread_runs_below_the_event_loop_priority() -> None:
    runtime = FakeRuntime()

    async def scenario() -> None:
        batcher = make(runtime, compute_nice=5)
        batcher.start()
        try:
            await batcher.infer([seq(3)], timeout_seconds=TIMEOUT)
        finally:
            await batcher.stop()

    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    run(scenario)
    assert runtime.nice == [min(19, loop_nice + 5)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_nice  # the caller is unchanged


def test_cancelled_requests_are_dropped_before_compute() -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)
    observer = RecordingObserver()

    async def scenario() -> np.ndarray:
        batcher = make(runtime, observer)
        batcher.start()
        try:
            running = asyncio.ensure_future(batcher.infer([seq(1)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.started)
            gone = asyncio.ensure_future(batcher.infer([seq(2, 7.0), seq(3, 7.0)], timeout_seconds=TIMEOUT))
            kept = asyncio.ensure_future(batcher.infer([seq(2, 1.0)], timeout_seconds=TIMEOUT))
            await asyncio.sleep(0)
            gone.cancel()  # the client went away
            await asyncio.sleep(0)
            gate.set()
            await running
            [answer] = await kept
            assert gone.cancelled()
            return answer
        finally:
            await batcher.stop()

    answer = run(scenario)
    assert answer.tolist() == [4.0, 2.0]
    assert all((batch != 7.0).all() for batch, _ in runtime.calls), "cancelled sequences were computed"
    assert observer.drops == {"cancelled": 2}


def test_a_request_past_its_deadline_times_out_and_is_not_computed() -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)
    observer = RecordingObserver()

    async def scenario() -> None:
        batcher = make(runtime, observer)
        batcher.start()
        try:
            running = asyncio.ensure_future(batcher.infer([seq(1)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.started)
            with pytest.raises(RequestTimeout):
                await batcher.infer([seq(2, 9.0)], timeout_seconds=0.05)
            gate.set()
            await running
            await batcher.infer([seq(1)], timeout_seconds=TIMEOUT)
        finally:
            await batcher.stop()

    run(scenario)
    assert all((batch != 9.0).all() for batch, _ in runtime.calls)
    assert observer.drops == {"timeout": 1}


def test_a_failing_sequence_fails_only_its_own_request() -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate, fail_if=lambda batch: bool((batch == 666.0).any()))

    async def scenario() -> tuple[Any, ...]:
        batcher = make(runtime)
        batcher.start()
        try:
            blocker = asyncio.ensure_future(batcher.infer([seq(1)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.started)
            good = asyncio.ensure_future(batcher.infer([seq(2, 1.0)], timeout_seconds=TIMEOUT))
            bad = asyncio.ensure_future(batcher.infer([seq(2, 1.0), seq(2, 666.0)], timeout_seconds=TIMEOUT))
            await asyncio.sleep(0)
            gate.set()
            await blocker
            return await asyncio.gather(good, bad, return_exceptions=True)
        finally:
            await batcher.stop()

    good, bad = run(scenario)
    assert good[0].tolist() == [4.0, 2.0]
    assert isinstance(bad, InferenceFailed) and bad.error_id


def test_draining_refuses_new_requests_and_finishes_queued_ones() -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)

    async def scenario() -> None:
        batcher = make(runtime)
        batcher.start()
        try:
            running = asyncio.ensure_future(batcher.infer([seq(1)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.started)
            queued = asyncio.ensure_future(batcher.infer([seq(2)], timeout_seconds=TIMEOUT))
            await asyncio.sleep(0)
            batcher.begin_drain()
            with pytest.raises(Draining):
                batcher.submit([seq(1)], timeout_seconds=TIMEOUT)
            drained = asyncio.ensure_future(batcher.drain())
            gate.set()
            await drained
            assert running.done() and queued.done() and batcher.queued == 0
            await running
            await queued
        finally:
            await batcher.stop()

    run(scenario)


def test_stop_answers_whatever_is_left() -> None:
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)

    async def scenario() -> None:
        batcher = make(runtime)
        batcher.start()
        running = asyncio.ensure_future(batcher.infer([seq(1)], timeout_seconds=TIMEOUT))
        await wait_for_thread(runtime.started)
        queued = asyncio.ensure_future(batcher.infer([seq(2)], timeout_seconds=TIMEOUT))
        await asyncio.sleep(0)
        await batcher.stop()
        gate.set()
        for request in (running, queued):
            with pytest.raises(Draining):
                await request

    run(scenario)


def test_metrics_observer_sees_batches_and_queue_depth() -> None:
    runtime = FakeRuntime()
    observer = RecordingObserver()

    async def scenario() -> None:
        batcher = make(runtime, observer)
        batcher.start()
        try:
            await batcher.infer([seq(2), seq(4)], timeout_seconds=TIMEOUT)
        finally:
            await batcher.stop()

    run(scenario)
    assert observer.batches == [(2, 8, 6)]  # 2 sequences, padded to 2 x 4 cells, 6 real steps
    assert observer.depths[0] == 2 and observer.depths[-1] == 0
    assert len(observer.waits) == 2


def test_queue_depth_counts_a_batch_queued_behind_busy_workers_also_when_requests_drop() -> None:
    release = threading.Event()
    runtime = HeldRuntime({1.0: release})
    observer = RecordingObserver()

    async def scenario() -> None:
        batcher = make(runtime, observer, workers=1, max_batch_size=2)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.infer([seq(3, 1.0)], timeout_seconds=TIMEOUT))
            await wait_for_thread(runtime.entered[1.0])
            # A full batch waits: it is handed over behind the busy worker, and still counts as queued.
            behind = asyncio.ensure_future(batcher.infer([seq(2, 2.0)] * 2, timeout_seconds=TIMEOUT))
            await asyncio.sleep(0.05)
            assert batcher.queued == 0 and observer.depths[-1] == 2
            dropped = batcher.submit([seq(2, 3.0)], timeout_seconds=TIMEOUT)
            await asyncio.sleep(0.05)
            assert observer.depths[-1] == 3
            dropped.cancel()
            while not observer.drops:
                await asyncio.sleep(0.01)
            assert observer.depths[-2:] == [3, 2]  # one definition: the batch behind the worker still waits
            release.set()
            await first
            await behind
        finally:
            release.set()
            await batcher.stop()

    run(scenario)
    assert observer.drops == {"cancelled": 1} and observer.depths[-1] == 0


def test_a_batch_out_of_memory_is_split_in_halves_and_retried() -> None:
    oom = "CUDA out of memory. Tried to allocate 2.00 GiB"
    runtime = FakeRuntime(fail_if=lambda batch: len(batch) > 2 or bool((batch == 666.0).any()), fail_with=oom)

    async def scenario() -> tuple[Any, ...]:
        batcher = make(runtime)
        batcher.start()
        try:
            whole = batcher.infer([seq(3, float(v)) for v in range(1, 9)], timeout_seconds=TIMEOUT)
            result = await whole
            # Down to one sequence still out of memory: only that sequence's request fails.
            mixed = await asyncio.gather(
                batcher.infer([seq(2, 666.0), seq(2, 1.0), seq(2, 2.0), seq(2, 3.0)], timeout_seconds=TIMEOUT),
                return_exceptions=True,
            )
            after = await batcher.infer([seq(1, 5.0)], timeout_seconds=TIMEOUT)
            return result, mixed[0], after
        finally:
            await batcher.stop()

    result, mixed, after = run(scenario)
    assert [row.tolist() for row in result] == [[6.0 * v, 3.0] for v in range(1, 9)]
    assert runtime.batch_sizes[:7] == [8, 4, 2, 2, 4, 2, 2]
    assert isinstance(mixed, InferenceFailed) and mixed.error_id
    assert runtime.batch_sizes[7:12] == [4, 2, 1, 1, 2]  # halves of halves; the 666 alone still fails
    assert after[0].tolist() == [10.0, 1.0]


def test_other_failures_are_retried_one_by_one_not_halved() -> None:
    runtime = FakeRuntime(fail_if=lambda batch: bool((batch == 666.0).any()))

    async def scenario() -> Any:
        batcher = make(runtime)
        batcher.start()
        try:
            return await asyncio.gather(
                batcher.infer([seq(2, 1.0), seq(2, 666.0), seq(2, 2.0), seq(2, 3.0)], timeout_seconds=TIMEOUT),
                return_exceptions=True,
            )
        finally:
            await batcher.stop()

    (failed,) = run(scenario)
    assert isinstance(failed, InferenceFailed)
    assert runtime.batch_sizes == [4, 1, 1, 1, 1]
