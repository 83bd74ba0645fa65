"""The batch threads: results and errors come back on the event loop; a job cancelled while queued never runs."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.batching.threads import ComputeThreads


def test_results_errors_names_and_the_initializer() -> None:
    ran_in: list[str] = []
    initialised: list[str] = []

    def compute(x: int) -> int:
        ran_in.append(threading.current_thread().name)
        if x < 0:
            raise ValueError(f"negative: {x}")
        return 2 * x

    async def scenario() -> None:
        threads = ComputeThreads(
            2, compute, name="seqserve-m", initializer=lambda tag: initialised.append(tag), initargs=("on",)
        )
        try:
            assert await asyncio.gather(*(threads.submit(x) for x in range(6))) == [0, 2, 4, 6, 8, 10]
            with pytest.raises(ValueError, match="negative: -1"):
                await threads.submit(-1)
        finally:
            threads.shutdown()
        with pytest.raises(RuntimeError, match="after shutdown"):
            threads.submit(1)

    asyncio.run(scenario())
    assert initialised == ["on", "on"]
    assert set(ran_in) <= {"seqserve-m_0", "seqserve-m_1"}


def test_a_job_cancelled_while_queued_is_not_run() -> None:
    gate = threading.Event()
    ran: list[int] = []

    def compute(x: int) -> int:
        if x == 0:
            gate.wait(10)
        ran.append(x)
        return x

    async def scenario() -> None:
        threads = ComputeThreads(1, compute, name="t", initializer=lambda: None)
        try:
            first = threads.submit(0)
            queued = threads.submit(1)
            queued.cancel()
            last = threads.submit(2)
            gate.set()
            assert await first == 0 and await last == 2
        finally:
            threads.shutdown()

    asyncio.run(scenario())
    assert ran == [0, 2]
