"""The pending queue: every change keeps its sequences, time steps and earliest deadline in step."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.batching import PendingRequest
from service.batching.pending import PendingQueue

NewRequest = Callable[..., PendingRequest]


def counts(queue: PendingQueue) -> tuple[int, int, float]:
    return queue.sequences, queue.tokens, queue.earliest_deadline


def test_adding_counts_every_sequence_and_time_step(new_request: NewRequest) -> None:
    queue = PendingQueue()
    assert counts(queue) == (0, 0, float("inf"))
    first = new_request(3, 5, deadline=9.0)
    queue.add(first)
    queue.add(new_request(2, deadline=4.0))
    assert counts(queue) == (3, 10, 4.0)
    assert queue.lengths().tolist() == [3, 5, 2]
    assert [(item.request, item.index, item.length) for item in queue.items[:2]] == [(first, 0, 3), (first, 1, 5)]
    assert queue.items[1].sequence is first.sequences[1]


def test_taking_a_batch_frees_its_time_steps_and_its_deadline(new_request: NewRequest) -> None:
    queue = PendingQueue()
    urgent, later = new_request(3, 5, deadline=4.0), new_request(2, 7, deadline=9.0)
    queue.add(urgent)
    queue.add(later)
    taken = queue.take(np.array([0, 1]))
    assert [item.request for item in taken] == [urgent, urgent]
    assert counts(queue) == (2, 9, 9.0)
    assert queue.take(np.array([1]))[0].length == 7
    assert counts(queue) == (1, 2, 9.0) and queue.lengths().tolist() == [2]


def test_dropping_keeps_arrival_order_and_counts_of_what_stays(new_request: NewRequest) -> None:
    queue = PendingQueue()
    gone, kept = new_request(4, 1, deadline=2.0), new_request(3, deadline=6.0)
    queue.add(gone)
    queue.add(kept)
    queue.add(new_request(1, deadline=8.0))
    gone.cancel()
    dropped = queue.drop(lambda item: item.ended())
    assert [item.length for item in dropped] == [4, 1]
    assert counts(queue) == (2, 4, 6.0) and queue.lengths().tolist() == [3, 1]
    assert queue.drop(lambda item: item.ended()) == [] and counts(queue) == (2, 4, 6.0)


def test_clearing_empties_the_queue_and_returns_all_of_it(new_request: NewRequest) -> None:
    queue = PendingQueue()
    queue.add(new_request(2, 3, deadline=5.0))
    assert [item.length for item in queue.clear()] == [2, 3]
    assert counts(queue) == (0, 0, float("inf")) and queue.items == []
