"""The threads that compute batches: the event loop hands each batch over through a queue, and the thread
that ran it settles its future back on the loop.

`concurrent.futures.ThreadPoolExecutor` with `loop.run_in_executor` did the same with its locks, work item,
semaphore and a second future chained to the asyncio one: ~14 us of the event loop's time per batch against
~4 us for a queue put (measured with a worker doing Python work, as padding does), once per batch on the
loop that is the limit for small models.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_Job = tuple[Callable[[Any], Any], Any, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class ComputeThreads(Generic[T, R]):
    """`count` threads, started on the first `submit`, each running `initializer(*initargs)` first and then
    `function(argument)` for each job in turn. Daemon threads, as a thread pool that is shut down without
    waiting: a job still queued when its future was cancelled is skipped."""

    def __init__(
        self,
        count: int,
        function: Callable[[T], R],
        *,
        name: str,
        initializer: Callable[..., None],
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self._count = count
        self._function = function
        self._name = name
        self._initializer = initializer
        self._initargs = initargs
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._shut = False

    def submit(self, argument: T) -> asyncio.Future[R]:
        """A future of `function(argument)` run on one of the threads; needs a running event loop."""
        if self._shut:
            raise RuntimeError("cannot compute after shutdown")
        if not self._threads:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._jobs.put((self._function, argument, future, loop))
        return future

    def shutdown(self) -> None:
        """Let each thread end once the job it runs (if any) is done; queued jobs whose futures were cancelled
        are not run."""
        self._shut = True
        for _ in self._threads:
            self._jobs.put(None)

    def _start(self) -> None:
        for i in range(self._count):
            thread = threading.Thread(target=self._serve, name=f"{self._name}_{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self) -> None:
        self._initializer(*self._initargs)
        while (job := self._jobs.get()) is not None:
            function, argument, future, loop = job
            if future.done():  # cancelled while queued; read from this thread, settled only on the loop
                continue
            result: Any = None
            error: BaseException | None = None
            try:
                result = function(argument)
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for it
                loop.call_soon_threadsafe(_settle, future, result, error)
            del job, future, argument, result, error


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
