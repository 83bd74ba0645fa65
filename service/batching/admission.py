"""Whether a model version takes a request: refused at once, never made to wait.

Two checks: `reading()` before a request's body is read and parsed, estimating
its size from the mean request so far; `admit()` once its sequences are known.
Both read the queue's counters and change nothing in the queue.
"""

from __future__ import annotations

import contextlib

from service.batching.pending import PendingQueue
from service.batching.planner import BatchPolicy
from service.errors import Draining, Overloaded, PayloadTooLarge
from service.queue_totals import QueueCounter


class Admission:
    def __init__(
        self, policy: BatchPolicy, queue: PendingQueue, *, name: str, counter: QueueCounter | None = None
    ) -> None:
        """`counter`: what every HTTP process has queued for this model version, which the limits then hold for
        (None: this process's `queue` alone)."""
        self._policy = policy
        self._queue = queue
        self._counter = counter
        self._name = name
        self.closing = False  # draining or stopped: every request is refused
        self._reading = 0  # requests admitted by `reading()` whose bodies are still being read
        self._admitted = 0  # requests admitted so far
        self._mean_sequences = 0.0  # per request: the mean of the first ten, then a moving average
        self._mean_tokens = 0.0  # time steps per request, likewise
        self._read = _Read(self)

    @property
    def reading_requests(self) -> int:
        """Requests admitted by `reading()` whose bodies are still being read."""
        return self._reading

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Admit a request before its body is read and parsed, or raise `Overloaded` / `Draining` at once.

        Under overload the event loop would otherwise spend its time parsing bodies
        only to refuse them at `admit()`, and accepted requests would wait behind
        that work. The requests being read count as the mean request seen so far.
        """
        if self.closing:
            raise Draining("the server is shutting down")
        queued, queued_tokens = self._queued()
        incoming = self._reading + 1
        policy = self._policy
        over = None
        if queued + incoming * self._mean_sequences > policy.max_queue:
            over = f"{queued} sequences queued (limit {policy.max_queue})"
        elif queued_tokens + incoming * self._mean_tokens > policy.max_queued_tokens:
            over = f"{queued_tokens} time steps queued (limit {policy.max_queued_tokens})"
        if over is not None and (queued or self._reading):  # an idle model always reads a request
            raise Overloaded(f"model {self._name} has {over} and {self._reading} requests being read; retry later")
        self._reading += 1
        return self._read  # NOTE: one object for every request (a generator-based one cost a request ~1 us)

    def admit(self, count: int, tokens: int) -> None:
        """Take a request of `count` sequences and `tokens` time steps in all into the moving means,
        or raise `Draining`, `PayloadTooLarge` (it could never be queued) or `Overloaded` (not now)."""
        if self.closing:
            raise Draining("the server is shutting down")
        if count == 0:
            raise ValueError("a request needs at least one sequence")
        limit, most = self._policy.max_queued_tokens, self._policy.max_queue
        if tokens > limit:
            raise PayloadTooLarge(f"request has {tokens} time steps in all; max_queued_tokens is {limit}")
        queued, queued_tokens = self._queued()
        if queued + count > most:
            raise Overloaded(f"model {self._name} has {queued} sequences queued (limit {most}); retry later")
        if queued_tokens + tokens > limit:
            raise Overloaded(f"model {self._name} has {queued_tokens} time steps queued (limit {limit}); retry later")
        self._admitted += 1
        weight = max(0.1, 1.0 / self._admitted)
        self._mean_sequences += weight * (count - self._mean_sequences)
        self._mean_tokens += weight * (tokens - self._mean_tokens)

    def _queued(self) -> tuple[int, int]:
        """Sequences and time steps queued: in every HTTP process when they share their counts."""
        if self._counter is not None:
            return self._counter.totals()
        return self._queue.sequences, self._queue.tokens


class _Read:
    """What `Admission.reading()` returns: leaving it ends the read (however it ends)."""

    __slots__ = ("_admission",)

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        self._admission._reading -= 1
