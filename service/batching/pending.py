"""The requests waiting for the batcher: one record per request, and the queue of their sequences.

`PendingQueue` is the only thing that changes the queue. Every change goes through
`add`, `take`, `drop` or `clear`, which keep its counters (sequences, time steps,
earliest deadline) in step with the sequences it holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.errors import RequestTimeout
from service.queue_totals import QueueCounter


@dataclass(eq=False)
class PendingRequest:
    """One request: its sequences and the future that answers it with one output per sequence."""

    sequences: Sequence[np.ndarray]
    future: asyncio.Future[list[np.ndarray]]
    enqueued_at: float
    deadline: float
    arrived_idle: bool
    states: Sequence[np.ndarray] | None = None
    """Stream chunks: each sequence's recurrent state `[S]` float32, carried into its batch row."""
    timer: asyncio.TimerHandle | None = None
    """What fails it at its timeout (`Batcher.watch`)."""
    gone: asyncio.Future[object] | None = None
    """Completes when its caller goes away, which cancels it (`Batcher.watch`)."""
    _results: list[np.ndarray | None] = field(default_factory=list)
    _remaining: int = 0

    def __post_init__(self) -> None:
        self._results = [None] * len(self.sequences)
        self._remaining = len(self.sequences)

    def cancel(self) -> None:
        """Give up on the request: its sequences still queued are dropped before compute."""
        self.future.cancel()

    def abandon(self, _: object) -> None:
        """`cancel`, as a done callback of the future that completes when the caller goes away."""
        self.future.cancel()

    def release(self) -> None:
        """`cancel` (a no-op once answered), and stop watching its timeout and its caller."""
        self.future.cancel()
        if self.timer is not None:
            self.timer.cancel()
        if self.gone is not None:
            self.gone.remove_done_callback(self.abandon)

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


def ended_by(request: PendingRequest) -> str:
    """Why a request ended before all its sequences ran: cancelled, timeout or failed."""
    if request.future.cancelled():
        return "cancelled"
    return "timeout" if isinstance(request.future.exception(), RequestTimeout) else "failed"


@dataclass(eq=False, slots=True)
class Item:
    """One sequence of a pending request: the unit the planner batches and a worker computes."""

    request: PendingRequest
    index: int
    length: int

    @property
    def sequence(self) -> np.ndarray:
        return self.request.sequences[self.index]

    @property
    def state(self) -> np.ndarray | None:
        """A stream chunk's state in; None for a whole sequence."""
        states = self.request.states
        return None if states is None else states[self.index]

    def ended(self) -> bool:
        """Whether its request has ended (answered, cancelled, timed out, failed).

        Safe to call from a worker thread: only the event loop changes a future."""
        return self.request.future.done()


class PendingQueue:
    """The sequences waiting for a batch, oldest first, with their time steps summed and the
    earliest deadline of their requests. `add`, once per request, costs only that request's
    sequences; `take`, `drop` and `clear` (once per batch, or once a request ended) rebuild
    the list and rescan the deadlines of what stays."""

    __slots__ = ("_counter", "earliest_deadline", "items", "tokens")

    def __init__(self, counter: QueueCounter | None = None) -> None:
        """`counter`: where to publish the counts for the other HTTP processes' admissions (None: nobody reads them)."""
        self.items: list[Item] = []  # arrival order
        self.tokens = 0
        self.earliest_deadline = float("inf")
        self._counter = counter

    @property
    def sequences(self) -> int:
        return len(self.items)

    def lengths(self) -> np.ndarray:
        """The queued sequences' lengths, [N], oldest first: what the planner reads."""
        return np.fromiter((item.length for item in self.items), dtype=np.int64, count=len(self.items))

    def length_list(self) -> list[int]:
        """`lengths` as a list: what the batcher plans with (`plan_positions`)."""
        return [item.length for item in self.items]

    def add(self, request: PendingRequest) -> None:
        self.items.extend(Item(request, i, len(seq)) for i, seq in enumerate(request.sequences))
        self.tokens += sum(map(len, request.sequences))
        self.earliest_deadline = min(self.earliest_deadline, request.deadline)
        if self._counter is not None:
            self._counter.publish(len(self.items), self.tokens)

    def take(self, indices: np.ndarray | Sequence[int]) -> list[Item]:
        """Remove and return the items at `indices` (positions in arrival order, ascending)."""
        positions: list[int] = indices.tolist() if isinstance(indices, np.ndarray) else list(indices)
        taken = [self.items[i] for i in positions]
        chosen = set(positions)
        self._keep([item for i, item in enumerate(self.items) if i not in chosen], taken)
        return taken

    def drop(self, ended: Callable[[Item], bool]) -> list[Item]:
        """Remove and return the items for which `ended` is true."""
        kept: list[Item] = []
        dropped: list[Item] = []
        for item in self.items:
            (dropped if ended(item) else kept).append(item)
        if dropped:
            self._keep(kept, dropped)
        return dropped

    def clear(self) -> list[Item]:
        """Remove and return every item."""
        items = self.items
        self._keep([], items)
        return items

    def _keep(self, kept: list[Item], removed: list[Item]) -> None:
        self.items = kept
        self.tokens -= sum(item.length for item in removed)
        self.earliest_deadline = min((item.request.deadline for item in kept), default=float("inf"))
        if self._counter is not None:
            self._counter.publish(len(kept), self.tokens)
