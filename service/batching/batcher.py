"""Dynamic micro-batching for one model version.

Callers `submit()` a request of one or more sequences; one task owns the
queue, forms batches with `plan_positions` and hands each to a worker thread, so
the event loop keeps serving HTTP while batches compute and the next one
gathers. `workers` batches compute at once (on the CPU, one per core, each
single-threaded: see `runtime.onnx`). A request's future resolves once all of
its sequences are done, or fails once.

The parts: `Admission` decides whether a request is taken, `PendingQueue` holds
what waits, `plan_positions` chooses the next batch, `BatchWorker` computes it on a
worker thread. `Batcher` owns the queue's task and when each batch is handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.batching.admission import Admission
from service.batching.pending import Item, PendingQueue, PendingRequest, ended_by
from service.batching.planner import BatchPolicy, batch_cost, capacity, plan_positions
from service.batching.threads import ComputeThreads
from service.batching.worker import BatchWorker, Outcome
from service.errors import Abandoned, Draining, InferenceFailed, RequestTimeout
from service.queue_totals import QueueCounter
from service.runtime import Runtime, StreamRuntime, lower_thread_priority

log = logging.getLogger(__name__)

# NOTE: while every worker computes, the next batch is handed over shortly before
# the first running one is expected to end, so no worker idles while the event
# loop is busy with HTTP; sequences that arrive in the last LEAD_SECONDS wait for
# the batch after.
LEAD_SECONDS = 0.004


class BatchObserver(Protocol):
    """Where the batcher reports what it did (metrics); every call is made on the event loop."""

    def queue_depth(self, sequences: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch(self, size: int, padded_tokens: int, real_tokens: int, compute_seconds: float) -> None: ...

    def dropped(self, reason: str, sequences: int) -> None: ...


class _NullObserver:
    def queue_depth(self, sequences: int) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def batch(self, size: int, padded_tokens: int, real_tokens: int, compute_seconds: float) -> None:
        pass

    def dropped(self, reason: str, sequences: int) -> None:
        pass


@dataclass(eq=False)
class _Batch:
    """A batch handed to a worker thread: its items, their future, when it should end."""

    items: list[Item]
    future: asyncio.Future[Outcome]
    cost: float
    expected_end: float | None  # loop time; None without an estimate yet


def _time_out(request: PendingRequest, seconds: float) -> None:
    request._fail(RequestTimeout(f"no answer within {seconds:g} s"))


class Batcher:
    def __init__(
        self,
        runtime: Runtime | StreamRuntime,
        policy: BatchPolicy,
        *,
        pad_value: float | int,
        dtype: type[np.generic],
        uses_lengths: bool,
        observer: BatchObserver | None = None,
        name: str = "model",
        compute_nice: int = 0,
        workers: int = 1,
        stream: bool = False,
        counter: QueueCounter | None = None,
    ) -> None:
        """`stream`: `runtime` is a stream graph; requests carry each chunk's state (`submit(states=...)`)
        and each answer is packed as `service.batching.worker.unpack_stream` reads it. `counter`: the queue's
        row in the table the HTTP processes share (`service.queue_totals`); the policy's queue limits then
        hold for their sum."""
        if workers < 1:
            raise ValueError("a batcher needs at least one worker")
        self._policy = policy
        self._observer: BatchObserver = observer or _NullObserver()
        self._name = name
        self._queue = PendingQueue(counter)
        self._admission = Admission(policy, self._queue, name=name, counter=counter)
        self._worker = BatchWorker(
            runtime, pad_value=pad_value, dtype=dtype, uses_lengths=uses_lengths, name=name, stream=stream
        )
        self._stream = stream
        self._ended_early = False  # a request ended (cancelled, failed) with sequences still queued
        self._workers = workers
        self._inflight: list[_Batch] = []  # at most workers + 1: those computing, the next queued behind them
        self._seconds_per_cost: float | None = None  # running estimate of compute time per cost unit
        self._reported_depth = -1
        self._stopping = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, once started
        self._threads: ComputeThreads[list[Item], Outcome] = ComputeThreads(
            workers,
            self._worker.compute,
            name=f"seqserve-{name}",
            initializer=lower_thread_priority,
            initargs=(compute_nice,),
        )

    # -- owner's interface ------------------------------------------------

    def start(self) -> None:
        """Start the task that owns the queue; needs a running event loop."""
        # NOTE: kept: `asyncio.get_running_loop()` is a getpid() system call per call on Python 3.11
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"batcher-{self._name}")
        self._task.add_done_callback(self._task_ended)

    def begin_drain(self) -> None:
        """Refuse new requests from now on; those already queued still run."""
        self._admission.closing = True

    async def drain(self) -> None:
        """Wait until every queued and in-flight sequence is answered."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Stop the task; requests still waiting fail with `Draining`."""
        self._admission.closing = self._stopping = True
        if self._task is not None:
            # NOTE: the flag, not only the cancel: a cancel that lands as the task's wait
            # ends can be lost (asyncio.wait_for, Python 3.11); the task checks the flag.
            self._wake.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._threads.shutdown()

    @property
    def queued(self) -> int:
        """Sequences submitted and not yet handed to a worker or dropped."""
        return self._queue.sequences

    @property
    def busy(self) -> bool:
        """Whether a request admitted here is unanswered: its body being read (`reading()`), queued or
        computing. Unlike `drain()`, this counts the requests still reading, which submit later."""
        return self._admission.reading_requests > 0 or not self._idle.is_set()

    @property
    def running(self) -> bool:
        """False once the task that owns the queue has ended (stopped or crashed)."""
        return self._task is not None and not self._task.done()

    # -- callers' interface -----------------------------------------------

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Admit a request before its body is read and parsed, or raise `Overloaded` / `Draining` at once
        (see `Admission.reading`)."""
        return self._admission.reading()

    def submit(
        self, sequences: Sequence[np.ndarray], *, timeout_seconds: float, states: Sequence[np.ndarray] | None = None
    ) -> PendingRequest:
        """Queue a request at once, or raise `Overloaded` / `Draining` / `PayloadTooLarge` at once; never waits.
        `states`: one recurrent state per sequence, required by (and only for) a stream batcher."""
        if (states is not None) != self._stream or (states is not None and len(states) != len(sequences)):
            raise ValueError("a stream batcher takes one state per sequence; a whole-sequence batcher none")
        self._admission.admit(len(sequences), sum(map(len, sequences)))
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        request = PendingRequest(
            sequences=sequences,
            future=loop.create_future(),
            enqueued_at=now,
            deadline=now + timeout_seconds,
            arrived_idle=len(self._inflight) < self._workers and not self._queue.sequences,
            states=states,
        )
        request.future.add_done_callback(lambda _: self._on_request_done(request))
        self._queue.add(request)
        self._idle.clear()
        self._wake.set()  # the task reports the new queue depth
        return request

    def watch(
        self,
        sequences: Sequence[np.ndarray],
        *,
        timeout_seconds: float,
        gone: asyncio.Future[Any] | None = None,
        states: Sequence[np.ndarray] | None = None,
    ) -> PendingRequest:
        """`submit`, failing the request with `RequestTimeout` after `timeout_seconds` and cancelling it when `gone`
        completes (its caller left); the caller calls its `release()` once it has its answer."""
        request = self.submit(sequences, timeout_seconds=timeout_seconds, states=states)
        # NOTE: callbacks on the request's own future rather than `asyncio.wait` (its sets, waiter future and
        # callbacks on every future, per request): the timer fails it, the caller leaving cancels it.
        loop = self._loop or asyncio.get_running_loop()
        request.timer = loop.call_later(timeout_seconds, _time_out, request, timeout_seconds)
        if gone is not None:
            request.gone = gone
            gone.add_done_callback(request.abandon)
        return request

    async def infer(
        self,
        sequences: Sequence[np.ndarray],
        *,
        timeout_seconds: float,
        gone: asyncio.Future[Any] | None = None,
        states: Sequence[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Submit and wait. If `gone` completes first (the client left) or the caller is cancelled,
        the request's queued sequences are dropped; `gone` first raises `Abandoned`."""
        request = self.watch(sequences, timeout_seconds=timeout_seconds, gone=gone, states=states)
        try:
            return await request.future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if gone is not None and gone.done() and (task is None or not task.cancelling()):
                raise Abandoned("the caller went away before its answer") from None
            raise
        finally:
            request.release()  # a no-op once answered; else (the caller was cancelled) drops what is still queued

    # -- the task that owns the queue --------------------------------------

    def _on_request_done(self, request: PendingRequest) -> None:
        if request._remaining > 0:
            self._ended_early = True
            self._wake.set()  # ended early: let the task drop its sequences now, freeing queue space

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("batcher %s stopped", self._name, exc_info=task.exception())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        try:
            while not self._stopping:
                self._wake.clear()
                timeout: float | None = None
                try:
                    now = loop.time()
                    self._drop_dead(now)
                    if any(batch.future.done() for batch in self._inflight):
                        done = [batch for batch in self._inflight if batch.future.done()]
                        self._inflight = [batch for batch in self._inflight if not batch.future.done()]
                        for batch in done:
                            self._finish(batch)
                    self._report_depth()
                    if queue.items and len(self._inflight) <= self._workers:
                        free = len(self._inflight) < self._workers
                        hold = self._hold_seconds(now) if free else self._next_hold_seconds(now)
                        if hold is not None and hold <= 0:
                            self._dispatch(loop, now)
                            continue
                        timeout = hold
                    if queue.items:
                        nearest = queue.earliest_deadline - now
                        timeout = nearest if timeout is None else min(timeout, nearest)
                    elif not self._inflight:
                        self._idle.set()
                except Exception:  # NOTE: nothing may leave a caller hanging
                    error_id = uuid.uuid4().hex[:12]
                    log.exception("batcher %s failed (error id %s)", self._name, error_id)
                    self._fail_all(InferenceFailed("batching failed", error_id))
                    self._idle.set()
                    continue
                if timeout is None:
                    await self._wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(timeout, 0.0)):
                            await self._wake.wait()
        finally:
            self._fail_all(Draining("the server is shutting down"))
            self._idle.set()

    def _report_depth(self) -> None:
        """Report the queue depth when it changed: the sequences waiting for a worker, that is those
        queued and those of a batch handed over behind the busy workers."""
        depth = self._queue.sequences + sum(len(batch.items) for batch in self._inflight[self._workers :])
        if depth != self._reported_depth:
            self._reported_depth = depth
            self._observer.queue_depth(depth)

    def _report_dropped(self, requests: Iterable[PendingRequest]) -> None:
        """Report sequences dropped unrun, one per entry of `requests`, by why their request ended."""
        dropped: dict[str, int] = {}
        for request in requests:
            reason = ended_by(request)
            dropped[reason] = dropped.get(reason, 0) + 1
        for reason, count in dropped.items():
            self._observer.dropped(reason, count)

    def _drop_dead(self, now: float) -> None:
        # NOTE: runs on every wake-up (every request): a scan only when a request may have ended.
        if not self._ended_early and now < self._queue.earliest_deadline:
            return
        self._ended_early = False

        def ended(item: Item) -> bool:
            request = item.request
            if not request.future.done() and now >= request.deadline:
                request._fail(RequestTimeout("no answer within the request timeout"))
            return request.future.done()

        self._report_dropped(item.request for item in self._queue.drop(ended))

    def _hold_seconds(self, now: float) -> float:
        """How long to wait for company before dispatching; <= 0 means now."""
        oldest = self._queue.items[0].request
        if oldest.arrived_idle or self._policy.max_delay_ms <= 0:
            return 0.0
        if self._queue.sequences >= self._policy.max_batch_size:
            return 0.0
        hold = oldest.enqueued_at + self._policy.max_delay_ms / 1000.0 - now
        if hold > 0 and self._full_batch_waiting():
            return 0.0
        return hold

    def _full_batch_waiting(self) -> bool:
        """Whether the next planned batch is full (no more sequences of its kind could join)."""
        pending = self._queue.sequences
        if pending >= self._policy.max_batch_size:
            return True
        lengths = self._queue.length_list()
        # NOTE: the planner runs on every wake-up while workers are busy; it is skipped when
        # fewer sequences wait than even a batch of the longest of them could hold.
        if pending < capacity(self._policy, max(lengths)):
            return False
        return plan_positions(lengths, self._policy)[1]

    def _next_hold_seconds(self, now: float) -> float | None:
        """While every worker computes: how long until the next batch should be queued behind
        them. At once when it is full; else shortly before the first running batch should end;
        without an estimate of that, not before one ends (None: wait for a wake-up)."""
        if self._full_batch_waiting():
            return 0.0
        first_end = self._first_end()
        if first_end is None:
            return None
        return first_end - LEAD_SECONDS - now

    def _first_end(self) -> float | None:
        """When the first of the running batches should end (loop time); None without an estimate."""
        ends = [batch.expected_end for batch in self._inflight[: self._workers]]
        known = [end for end in ends if end is not None]
        return min(known) if known and len(known) == len(ends) else None

    def _dispatch(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        policy = self._policy
        pending = self._queue.sequences
        if self._workers > 1 and pending > 1:
            # NOTE: a batch takes a worker's share of what waits, not all of it: a batch on
            # one core takes about as long as its sequences one after another. Free workers
            # split it among themselves; a batch queued behind busy workers takes one
            # worker's share, leaving the rest to the next worker that frees up.
            free = self._workers - len(self._inflight)
            share = -(-pending // (free if free > 0 else self._workers))
            policy = dataclasses.replace(policy, max_batch_size=min(policy.max_batch_size, share))
        batch = self._queue.take(plan_positions(self._queue.length_list(), policy)[0])
        for item in batch:
            self._observer.queue_wait(now - item.request.enqueued_at)
        cost = batch_cost(len(batch), max(item.length for item in batch))
        expected_end = None
        if self._seconds_per_cost is not None:
            start = now if len(self._inflight) < self._workers else self._first_end()
            expected_end = None if start is None else max(start, now) + cost * self._seconds_per_cost
        future = self._threads.submit(batch)
        future.add_done_callback(lambda _: self._wake.set())
        self._inflight.append(_Batch(batch, future, cost, expected_end))

    def _finish(self, done: _Batch) -> None:
        batch = done.items
        try:
            outcome = done.future.result()
        except BaseException as exc:  # a worker thread itself failed (e.g. shut down)
            outcome = Outcome([exc] * len(batch), 0.0)
        if outcome.compute_seconds > 0 and not any(isinstance(o, BaseException) for o in outcome.outputs):
            rate = outcome.compute_seconds / done.cost
            previous = self._seconds_per_cost
            self._seconds_per_cost = rate if previous is None else 0.8 * previous + 0.2 * rate
        longest = max(item.length for item in batch)
        self._observer.batch(
            len(batch), len(batch) * longest, sum(item.length for item in batch), outcome.compute_seconds
        )
        skipped: list[PendingRequest] = []
        for item, output in zip(batch, outcome.outputs, strict=True):
            if output is None:
                skipped.append(item.request)
            elif isinstance(output, BaseException):
                error_id = uuid.uuid4().hex[:12]
                log.error("model %s failed on a batch (error id %s)", self._name, error_id, exc_info=output)
                item.request._fail(InferenceFailed(f"model {self._name} failed", error_id))
            else:
                item.request._set_output(item.index, output)
        self._report_dropped(skipped)

    def _fail_all(self, error: Exception) -> None:
        for item in self._queue.clear() + [item for batch in self._inflight for item in batch.items]:
            item.request._fail(error)
        for batch in self._inflight:
            batch.future.cancel()
        self._inflight.clear()
        self._report_depth()
