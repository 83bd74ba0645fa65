"""Pending requests without a running event loop, for the parts of the batcher that need none."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from service.batching import PendingRequest

NewRequest = Callable[..., PendingRequest]


@pytest.fixture
def new_request() -> Iterator[NewRequest]:
    """Makes a request of sequences of the given lengths; its future belongs to a loop that never runs."""
    loop = asyncio.new_event_loop()

    def make(*lengths: int, deadline: float = float("inf"), enqueued_at: float = 0.0) -> PendingRequest:
        sequences = [np.zeros((length, 1), dtype=np.float32) for length in lengths]
        return PendingRequest(sequences, loop.create_future(), enqueued_at, deadline, arrived_idle=False)

    yield make
    loop.close()
