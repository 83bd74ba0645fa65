"""Dynamic micro-batching for one model version.

Callers `submit()` a request of one or more sequences; one task owns the
queue, forms batches with `plan_batch` and hands each to a worker thread, so
the event loop keeps serving HTTP while batches compute and the next one
gathers. `workers` batches compute at once (on the CPU, one per core, each
single-threaded: see `runtime.onnx`). A request's future resolves once all of
its sequences are done, or fails once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.batching.planner import BATCH_COST_CELLS, STEP_COST_ROWS, BatchPolicy, capacity, plan_batch
from service.errors import Abandoned, Draining, InferenceFailed, Overloaded, PayloadTooLarge, RequestTimeout
from service.runtime import Runtime, lower_thread_priority

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
class PendingRequest:
    """One request: its sequences and the future that answers it with one output per sequence."""

    sequences: Sequence[np.ndarray]
    future: asyncio.Future[list[np.ndarray]]
    enqueued_at: float
    deadline: float
    arrived_idle: bool
    _results: list[np.ndarray | None] = field(default_factory=list)
    _remaining: int = 0

    def __post_init__(self) -> None:
        self._results = [None] * len(self.sequences)
        self._remaining = len(self.sequences)

    def cancel(self) -> None:
        """Give up on the request: its sequences still queued are dropped before compute."""
        self.future.cancel()

    def _set_output(self, index: int, output: np.ndarray) -> None:
        if self.future.done():
            return
        self._results[index] = output
        self._remaining -= 1
        if self._remaining == 0:
            self.future.set_result(self._results)  # type: ignore[arg-type]

    def _fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def _ended_by(future: asyncio.Future[list[np.ndarray]]) -> str:
    """Why a request ended before all its sequences ran: cancelled, timeout or failed."""
    if future.cancelled():
        return "cancelled"
    return "timeout" if isinstance(future.exception(), RequestTimeout) else "failed"


@dataclass(eq=False, slots=True)
class _Item:
    """One sequence of a pending request: the unit the planner batches."""

    request: PendingRequest
    index: int
    length: int


@dataclass(frozen=True)
class _Outcome:
    outputs: list[np.ndarray | BaseException | None]  # None: its request had ended before compute
    compute_seconds: float


@dataclass(eq=False)
class _Batch:
    """A batch handed to a worker thread: its items, their future, when it should end."""

    items: list[_Item]
    future: asyncio.Future[_Outcome]
    cost: float
    expected_end: float | None  # loop time; None without an estimate yet


def _cost(rows: int, longest: int) -> float:
    """The planner's cost model of one batch (see `planner`)."""
    return longest * (rows + STEP_COST_ROWS) + BATCH_COST_CELLS


class Batcher:
    def __init__(
        self,
        runtime: Runtime,
        policy: BatchPolicy,
        *,
        pad_value: float | int,
        dtype: type[np.generic],
        uses_lengths: bool,
        observer: BatchObserver | None = None,
        name: str = "model",
        compute_nice: int = 0,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError("a batcher needs at least one worker")
        self._runtime = runtime
        self._policy = policy
        self._pad_value = pad_value
        self._dtype = dtype
        self._uses_lengths = uses_lengths
        self._observer: BatchObserver = observer or _NullObserver()
        self._name = name
        self._inbox: deque[PendingRequest] = deque()
        self._pending: list[_Item] = []
        self._earliest_deadline = float("inf")  # of the pending items' requests
        self._ended_early = False  # a request ended (cancelled, failed) with sequences still pending
        self._workers = workers
        self._inflight: list[_Batch] = []  # at most workers + 1: those computing, the next queued behind them
        self._seconds_per_cost: float | None = None  # running estimate of compute time per cost unit
        self._reported_depth = -1
        self._buffers = threading.local()  # per worker thread: padded batches, reused (see _padding_buffer)
        self._queued = 0  # sequences submitted and not yet dispatched or dropped
        self._queued_tokens = 0  # their time steps, summed
        self._reading = 0  # requests admitted by `reading()` whose bodies are still being read
        self._submitted = 0  # requests queued so far
        self._mean_sequences = 0.0  # per request: the mean of the first ten, then a moving average
        self._mean_tokens = 0.0  # time steps per request, likewise
        self._closing = False
        self._stopping = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"seqserve-{name}",
            initializer=lower_thread_priority,
            initargs=(compute_nice,),
        )

    # -- owner's interface ------------------------------------------------

    def start(self) -> None:
        """Start the task that owns the queue; needs a running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self._name}")
        self._task.add_done_callback(self._task_ended)

    def begin_drain(self) -> None:
        """Refuse new requests from now on; those already queued still run."""
        self._closing = True

    async def drain(self) -> None:
        """Wait until every queued and in-flight sequence is answered."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Stop the task; requests still waiting fail with `Draining`."""
        self._closing = self._stopping = True
        if self._task is not None:
            # NOTE: the flag, not only the cancel: a cancel that lands as the task's wait
            # ends can be lost (asyncio.wait_for, Python 3.11); the task checks the flag.
            self._wake.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> bool:
        """False once the task that owns the queue has ended (stopped or crashed)."""
        return self._task is not None and not self._task.done()

    # -- callers' interface -----------------------------------------------

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Admit a request before its body is read and parsed, or raise `Overloaded` / `Draining` at once.

        Under overload the event loop would otherwise spend its time parsing bodies
        only to refuse them at `submit()`, and accepted requests would wait behind
        that work. The requests being read count as the mean request seen so far.
        """
        if self._closing:
            raise Draining("the server is shutting down")
        incoming = self._reading + 1
        policy = self._policy
        over = None
        if self._queued + incoming * self._mean_sequences > policy.max_queue:
            over = f"{self._queued} sequences queued (limit {policy.max_queue})"
        elif self._queued_tokens + incoming * self._mean_tokens > policy.max_queued_tokens:
            over = f"{self._queued_tokens} time steps queued (limit {policy.max_queued_tokens})"
        if over is not None and (self._queued or self._reading):  # an idle model always reads a request
            raise Overloaded(f"model {self._name} has {over} and {self._reading} requests being read; retry later")
        self._reading += 1
        try:
            yield
        finally:
            self._reading -= 1

    def submit(self, sequences: Sequence[np.ndarray], *, timeout_seconds: float) -> PendingRequest:
        """Queue a request at once, or raise `Overloaded` / `Draining` at once; never waits."""
        if self._closing:
            raise Draining("the server is shutting down")
        count = len(sequences)
        if count == 0:
            raise ValueError("a request needs at least one sequence")
        tokens = sum(len(s) for s in sequences)
        limit = self._policy.max_queued_tokens
        if tokens > limit:
            raise PayloadTooLarge(f"request has {tokens} time steps in all; max_queued_tokens is {limit}")
        if self._queued + count > self._policy.max_queue:
            raise Overloaded(
                f"model {self._name} has {self._queued} sequences queued (limit {self._policy.max_queue}); retry later"
            )
        if self._queued_tokens + tokens > limit:
            raise Overloaded(
                f"model {self._name} has {self._queued_tokens} time steps queued (limit {limit}); retry later"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        request = PendingRequest(
            sequences=sequences,
            future=loop.create_future(),
            enqueued_at=now,
            deadline=now + timeout_seconds,
            arrived_idle=len(self._inflight) < self._workers and self._queued == 0,
        )
        request.future.add_done_callback(lambda _: self._on_request_done(request))
        self._inbox.append(request)
        self._queued += count
        self._queued_tokens += tokens
        self._submitted += 1
        weight = max(0.1, 1.0 / self._submitted)
        self._mean_sequences += weight * (count - self._mean_sequences)
        self._mean_tokens += weight * (tokens - self._mean_tokens)
        self._idle.clear()
        self._wake.set()  # the task reports the new queue depth
        return request

    async def infer(
        self, sequences: Sequence[np.ndarray], *, timeout_seconds: float, gone: asyncio.Future[Any] | None = None
    ) -> list[np.ndarray]:
        """Submit and wait. If `gone` completes first (the client left) or the caller is cancelled,
        the request's queued sequences are dropped; `gone` first raises `Abandoned`."""
        request = self.submit(sequences, timeout_seconds=timeout_seconds)
        waits: tuple[asyncio.Future[Any], ...] = (request.future,) if gone is None else (request.future, gone)
        try:
            await asyncio.wait(waits, timeout=timeout_seconds, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            request.cancel()  # the caller was cancelled: drop what is still queued
            raise
        if request.future.done():
            return request.future.result()
        if gone is not None and gone.done():
            request.cancel()
            raise Abandoned("the caller went away before its answer")
        request._fail(RequestTimeout(f"no answer within {timeout_seconds:g} s"))
        return request.future.result()  # raises whatever ended it first

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
        try:
            while not self._stopping:
                self._wake.clear()
                timeout: float | None = None
                try:
                    self._admit()
                    now = loop.time()
                    self._drop_dead(now)
                    if any(batch.future.done() for batch in self._inflight):
                        done = [batch for batch in self._inflight if batch.future.done()]
                        self._inflight = [batch for batch in self._inflight if not batch.future.done()]
                        for batch in done:
                            self._finish(batch)
                    # A batch queued behind the running ones is still waiting.
                    depth = self._queued + sum(len(b.items) for b in self._inflight[self._workers :])
                    if depth != self._reported_depth:
                        self._reported_depth = depth
                        self._observer.queue_depth(depth)
                    if self._pending and len(self._inflight) <= self._workers:
                        free = len(self._inflight) < self._workers
                        hold = self._hold_seconds(now) if free else self._next_hold_seconds(now)
                        if hold is not None and hold <= 0:
                            self._dispatch(loop, now)
                            continue
                        timeout = hold
                    if self._pending:
                        nearest = self._earliest_deadline - now
                        timeout = nearest if timeout is None else min(timeout, nearest)
                    if not self._inflight and not self._pending and not self._inbox:
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

    def _admit(self) -> None:
        while self._inbox:
            request = self._inbox.popleft()
            self._earliest_deadline = min(self._earliest_deadline, request.deadline)
            self._pending.extend(_Item(request, i, len(seq)) for i, seq in enumerate(request.sequences))

    def _drop_dead(self, now: float) -> None:
        # NOTE: runs on every wake-up (every request): a scan only when a request may have ended.
        if not self._ended_early and now < self._earliest_deadline:
            return
        self._ended_early = False
        kept: list[_Item] = []
        dropped: dict[str, int] = {}
        for item in self._pending:
            request = item.request
            if not request.future.done() and now >= request.deadline:
                request._fail(RequestTimeout("no answer within the request timeout"))
            if request.future.done():
                reason = _ended_by(request.future)
                dropped[reason] = dropped.get(reason, 0) + 1
            else:
                kept.append(item)
        if dropped:
            self._queued_tokens -= sum(item.length for item in self._pending) - sum(item.length for item in kept)
            self._pending = kept
            self._reset_earliest_deadline()
            self._queued -= sum(dropped.values())
            self._observer.queue_depth(self._queued)
            for reason, count in dropped.items():
                self._observer.dropped(reason, count)

    def _hold_seconds(self, now: float) -> float:
        """How long to wait for company before dispatching; <= 0 means now."""
        oldest = self._pending[0].request
        if oldest.arrived_idle or self._policy.max_delay_ms <= 0:
            return 0.0
        if len(self._pending) >= self._policy.max_batch_size:
            return 0.0
        hold = oldest.enqueued_at + self._policy.max_delay_ms / 1000.0 - now
        if hold > 0 and self._full_batch_waiting():
            return 0.0
        return hold

    def _full_batch_waiting(self) -> bool:
        """Whether the next planned batch is full (no more sequences of its kind could join)."""
        pending = len(self._pending)
        if pending >= self._policy.max_batch_size:
            return True
        lengths = self._lengths()
        # NOTE: the planner runs on every wake-up while workers are busy; it is skipped when
        # fewer sequences wait than even a batch of the longest of them could hold.
        if pending < capacity(self._policy, int(lengths.max())):
            return False
        return plan_batch(lengths, self._policy).full

    def _reset_earliest_deadline(self) -> None:
        self._earliest_deadline = min((item.request.deadline for item in self._pending), default=float("inf"))

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

    def _lengths(self) -> np.ndarray:
        return np.fromiter((item.length for item in self._pending), dtype=np.int64, count=len(self._pending))

    def _dispatch(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        policy = self._policy
        if self._workers > 1 and len(self._pending) > 1:
            # NOTE: a batch takes a worker's share of what waits, not all of it: a batch on
            # one core takes about as long as its sequences one after another. Free workers
            # split it among themselves; a batch queued behind busy workers takes one
            # worker's share, leaving the rest to the next worker that frees up.
            free = self._workers - len(self._inflight)
            share = -(-len(self._pending) // (free if free > 0 else self._workers))
            policy = dataclasses.replace(policy, max_batch_size=min(policy.max_batch_size, share))
        plan = plan_batch(self._lengths(), policy)
        chosen = set(plan.indices.tolist())
        batch = [self._pending[i] for i in plan.indices]
        self._pending = [item for i, item in enumerate(self._pending) if i not in chosen]
        self._reset_earliest_deadline()
        self._queued -= len(batch)
        self._queued_tokens -= sum(item.length for item in batch)
        for item in batch:
            self._observer.queue_wait(now - item.request.enqueued_at)
        cost = _cost(len(batch), max(item.length for item in batch))
        expected_end = None
        if self._seconds_per_cost is not None:
            start = now if len(self._inflight) < self._workers else self._first_end()
            expected_end = None if start is None else max(start, now) + cost * self._seconds_per_cost
        future = loop.run_in_executor(self._executor, self._compute, batch)
        future.add_done_callback(lambda _: self._wake.set())
        self._inflight.append(_Batch(batch, future, cost, expected_end))

    def _finish(self, done: _Batch) -> None:
        batch = done.items
        try:
            outcome = done.future.result()
        except BaseException as exc:  # a worker thread itself failed (e.g. shut down)
            outcome = _Outcome([exc] * len(batch), 0.0)
        if outcome.compute_seconds > 0 and not any(isinstance(o, BaseException) for o in outcome.outputs):
            rate = outcome.compute_seconds / done.cost
            previous = self._seconds_per_cost
            self._seconds_per_cost = rate if previous is None else 0.8 * previous + 0.2 * rate
        longest = max(item.length for item in batch)
        self._observer.batch(
            len(batch), len(batch) * longest, sum(item.length for item in batch), outcome.compute_seconds
        )
        skipped: dict[str, int] = {}
        for item, output in zip(batch, outcome.outputs, strict=True):
            if output is None:
                reason = _ended_by(item.request.future)
                skipped[reason] = skipped.get(reason, 0) + 1
            elif isinstance(output, BaseException):
                error_id = uuid.uuid4().hex[:12]
                log.error("model %s failed on a batch (error id %s)", self._name, error_id, exc_info=output)
                item.request._fail(InferenceFailed(f"model {self._name} failed", error_id))
            else:
                item.request._set_output(item.index, output)
        for reason, count in skipped.items():
            self._observer.dropped(reason, count)

    def _fail_all(self, error: Exception) -> None:
        self._admit()
        for item in self._pending + [item for batch in self._inflight for item in batch.items]:
            item.request._fail(error)
        for batch in self._inflight:
            batch.future.cancel()
        self._pending = []
        self._earliest_deadline = float("inf")
        self._inflight.clear()
        self._queued = 0
        self._queued_tokens = 0
        self._reported_depth = 0
        self._observer.queue_depth(0)

    # -- the worker threads ------------------------------------------------

    def _compute(self, batch: list[_Item]) -> _Outcome:
        # NOTE: a batch may have waited behind the previous one: requests that ended
        # meanwhile (client gone, timed out) are skipped. Reading done() from this
        # thread is safe; only the event loop changes a future.
        live = [i for i, item in enumerate(batch) if not item.request.future.done()]
        if len(live) < len(batch):
            outcome = (
                self._compute_sequences([batch[i].request.sequences[batch[i].index] for i in live])
                if live
                else _Outcome([], 0.0)
            )
            outputs: list[np.ndarray | BaseException | None] = [None] * len(batch)
            for i, output in zip(live, outcome.outputs, strict=True):
                outputs[i] = output
            return _Outcome(outputs, outcome.compute_seconds)
        return self._compute_sequences([item.request.sequences[item.index] for item in batch])

    def _compute_sequences(self, sequences: list[np.ndarray]) -> _Outcome:
        started = time.perf_counter()
        outputs = self._run_isolating(sequences)
        return _Outcome(outputs, time.perf_counter() - started)

    def _run_isolating(self, sequences: list[np.ndarray]) -> list[np.ndarray | BaseException | None]:
        """Run a batch; if it fails, find who fails: a batch out of memory is split in halves and
        retried (down to one sequence), any other failure is retried one by one, so that one bad
        sequence fails only its own request."""
        try:
            return list(self._run_batch(sequences))
        except Exception as exc:
            if len(sequences) == 1:
                return [exc]
            if _out_of_memory(exc):
                half = len(sequences) // 2
                log.warning("model %s ran out of memory on a batch of %d; splitting it", self._name, len(sequences))
                return self._run_isolating(sequences[:half]) + self._run_isolating(sequences[half:])
            log.warning("model %s failed on a batch of %d; retrying one by one", self._name, len(sequences))
            outputs: list[np.ndarray | BaseException | None] = []
            for seq in sequences:
                try:
                    outputs.extend(self._run_batch([seq]))
                except Exception as single:
                    outputs.append(single)
            return outputs

    def _padding_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous `shape` view of the calling worker's buffer, reused across its batches
        (a worker pads one batch at a time, and runtimes do not keep their input)."""
        size = int(np.prod(shape))
        buffer: np.ndarray | None = getattr(self._buffers, "padded", None)
        if buffer is None or buffer.size < size:
            buffer = np.empty(max(size, 0 if buffer is None else 2 * buffer.size), dtype=self._dtype)
            self._buffers.padded = buffer
        return buffer[:size].reshape(shape)

    def _run_batch(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        rows, longest = len(sequences), int(lengths.max())
        fixed_batch = self._runtime.fixed_batch
        padded_rows = fixed_batch if fixed_batch is not None else rows
        tail = sequences[0].shape[1:]
        padded = self._padding_buffer((padded_rows, longest, *tail))
        padded.fill(self._pad_value)
        for row, seq in enumerate(sequences):
            padded[row, : len(seq)] = seq
        feed_lengths = None
        if self._uses_lengths:
            feed_lengths = np.full(padded_rows, longest, dtype=np.int64)
            feed_lengths[:rows] = lengths
        out = np.asarray(self._runtime.predict(padded, feed_lengths))
        if out.shape[0] != padded_rows:
            raise ValueError(f"runtime returned {out.shape[0]} rows for a batch of {padded_rows}")
        if out.ndim >= 3:  # per-step output [B, T, C]: drop the padded steps
            if out.shape[1] != longest:
                raise ValueError(f"runtime returned {out.shape[1]} steps for a batch of {longest}")
            return [out[row, : lengths[row]] for row in range(rows)]
        return [out[row] for row in range(rows)]


_OUT_OF_MEMORY = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation")


def _out_of_memory(exc: BaseException) -> bool:
    """A runtime's out-of-memory error (torch's `CUDA out of memory`, ONNX Runtime's `Failed to
    allocate memory`): a smaller batch may fit."""
    return isinstance(exc, MemoryError) or any(mark in str(exc).lower() for mark in _OUT_OF_MEMORY)
