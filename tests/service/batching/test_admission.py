"""Admission without an event loop: what `reading()` and `submit()` refuse, and with which message."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from service.batching import BatchPolicy, PendingRequest
from service.batching.admission import Admission
from service.batching.pending import PendingQueue
from service.errors import Draining, Overloaded, PayloadTooLarge

NewRequest = Callable[..., PendingRequest]


def make(**overrides: Any) -> tuple[Admission, PendingQueue]:
    fields: dict[str, Any] = {"max_batch_size": 32, "max_batch_tokens": 8192, "max_delay_ms": 2.0, "max_queue": 8}
    fields.update(overrides)
    queue = PendingQueue()
    return Admission(BatchPolicy(**fields), queue, name="fake/1"), queue


def test_a_draining_model_refuses_before_and_after_reading() -> None:
    admission, _ = make()
    admission.closing = True
    with pytest.raises(Draining, match="shutting down"), admission.reading():
        pass
    with pytest.raises(Draining, match="shutting down"):
        admission.admit(1, 1)


def test_a_request_without_sequences_is_a_caller_error() -> None:
    admission, _ = make()
    with pytest.raises(ValueError, match="at least one sequence"):
        admission.admit(0, 0)


def test_a_request_larger_than_the_queue_could_ever_hold_is_too_large() -> None:
    admission, _ = make(max_queued_tokens=100)
    with pytest.raises(PayloadTooLarge, match="request has 101 time steps in all; max_queued_tokens is 100"):
        admission.admit(2, 101)
    admission.admit(1, 100)


def test_a_full_queue_refuses_by_sequences_and_by_time_steps(new_request: NewRequest) -> None:
    admission, queue = make(max_queue=3, max_queued_tokens=100)
    queue.add(new_request(60, 30))
    with pytest.raises(Overloaded, match=r"model fake/1 has 2 sequences queued \(limit 3\); retry later"):
        admission.admit(2, 2)
    with pytest.raises(Overloaded, match=r"model fake/1 has 90 time steps queued \(limit 100\); retry later"):
        admission.admit(1, 11)
    admission.admit(1, 10)  # exactly at both limits


def test_reading_sheds_when_the_requests_being_read_would_overflow_the_queue(new_request: NewRequest) -> None:
    admission, queue = make(max_queue=8)
    admission.admit(4, 4)  # the mean request: 4 sequences
    queue.add(new_request(1, 1, 1, 1))
    # 4 queued + 1 request of ~4 being read fits 8; a second one being read would not.
    shed = pytest.raises(Overloaded, match=r"4 sequences queued \(limit 8\) and 1 requests being read")
    with admission.reading(), shed, admission.reading():
        pass
    with admission.reading():  # the first reader finished: room again
        pass


def test_the_means_move_with_each_request_admitted(new_request: NewRequest) -> None:
    admission, queue = make(max_queue=100, max_queued_tokens=1000)
    queue.add(new_request(1))
    for _ in range(10):
        admission.admit(1, 100)  # the mean of the first ten: 100 steps
    shed = pytest.raises(Overloaded, match=r"1 time steps queued \(limit 1000\) and 9 requests being read")
    with shed, contextlib.ExitStack() as readers:
        for _ in range(10):  # 1 + 10 x 100 steps would pass 1000
            readers.enter_context(admission.reading())
    admission.admit(1, 10)  # then a moving average: 100 + 0.1 x (10 - 100) = 91 steps
    with contextlib.ExitStack() as readers:
        for _ in range(10):  # 1 + 10 x 91 steps fit
            readers.enter_context(admission.reading())
        with pytest.raises(Overloaded, match="and 10 requests being read"), admission.reading():
            pass
