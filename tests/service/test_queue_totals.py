"""The queue table the HTTP processes share: each process's queue publishes its counts, and every admission holds
the limits for their sum. Two processes are two views of one shared array here, as the workers are."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.batching import BatchPolicy, PendingRequest
from service.batching.admission import Admission
from service.batching.pending import PendingQueue
from service.errors import Overloaded, PayloadTooLarge
from service.queue_totals import QueueTable, forget, queue_key, queue_keys, table_size

NewRequest = Callable[..., PendingRequest]
KEYS = [queue_key("fake", 1), queue_key("fake", 1, streams=True), queue_key("other", 2)]


def tables(processes: int) -> list[QueueTable]:
    cells = multiprocessing.get_context("spawn").RawArray("q", table_size(KEYS, processes))
    return [QueueTable(cells, KEYS, index, processes) for index in range(processes)]


def process(table: QueueTable, key: str = "fake/1", **limits: int) -> tuple[Admission, PendingQueue]:
    counter = table.counter(key)
    assert counter is not None
    fields = {"max_batch_size": 32, "max_batch_tokens": 8192, "max_delay_ms": 2.0, "max_queue": 3}
    policy = BatchPolicy(**{**fields, "max_queued_tokens": 100, **limits})  # type: ignore[arg-type]
    queue = PendingQueue(counter)
    return Admission(policy, queue, name="fake/1", counter=counter), queue


def test_each_admission_holds_the_limits_for_what_every_process_has_queued(new_request: NewRequest) -> None:
    first, second = (process(table) for table in tables(2))
    second[1].add(new_request(60, 30))  # queued in the other process only
    with pytest.raises(Overloaded, match=r"model fake/1 has 2 sequences queued \(limit 3\); retry later"):
        first[0].admit(2, 2)
    with pytest.raises(Overloaded, match=r"model fake/1 has 90 time steps queued \(limit 100\); retry later"):
        first[0].admit(1, 11)
    first[0].admit(1, 10)  # exactly at both limits, counting the other's queue
    first[1].add(new_request(10))
    with pytest.raises(Overloaded, match=r"has 3 sequences queued"):
        second[0].admit(1, 1)
    # the other process's batch takes its sequences: the room is everyone's again
    second[1].take([0, 1])
    second[0].admit(2, 2)


def test_reading_sheds_on_the_sum_and_an_idle_server_always_reads(new_request: NewRequest) -> None:
    first, second = (process(table, max_queue=4) for table in tables(2))
    with first[0].reading():  # nothing queued anywhere: read, whatever the mean request
        pass
    first[0].admit(2, 2)  # the mean request: 2 sequences
    second[1].add(new_request(5, 5, 5))
    with pytest.raises(Overloaded, match=r"has 3 sequences queued \(limit 4\) and 0 requests being read"):
        first[0].reading().__enter__()
    second[1].clear()
    with first[0].reading():
        pass


def test_the_counts_follow_every_change_of_a_queue(new_request: NewRequest) -> None:
    table = tables(3)[2]
    counter = table.counter("fake/1")
    assert counter is not None
    queue = PendingQueue(counter)
    queue.add(new_request(4, 6))
    queue.add(new_request(3, deadline=1.0))
    assert counter.totals() == (3, 13)
    queue.take(np.array([0]))
    assert counter.totals() == (2, 9)
    queue.drop(lambda item: item.request.deadline <= 1.0)
    assert counter.totals() == (1, 6)
    queue.clear()
    assert counter.totals() == (0, 0)


def test_a_process_that_ended_is_forgotten_in_every_row(new_request: NewRequest) -> None:
    cells = multiprocessing.get_context("spawn").RawArray("q", table_size(KEYS, 3))
    views = [QueueTable(cells, KEYS, index, 3) for index in range(3)]
    queues = {(index, key): PendingQueue(views[index].counter(key)) for index in range(3) for key in KEYS}
    for queue in queues.values():
        queue.add(new_request(2, 3))
    forget(cells, 3, 1)  # what the parent does once process 1 has ended
    for key in KEYS:
        counter = views[0].counter(key)
        assert counter is not None and counter.totals() == (4, 10)


def test_rows_are_apart_for_each_queue_and_a_queue_without_a_row_has_no_counter(new_request: NewRequest) -> None:
    first, second = tables(2)
    (_, whole), (streams_admission, _) = process(first), process(second, "fake/1/streams")
    whole.add(new_request(1, 1, 1))
    streams_admission.admit(3, 3)  # the stream batcher's queue is another row
    assert first.counter("fake/2") is None  # e.g. a version a poll found after the start


def test_a_request_is_too_large_only_past_the_whole_limit() -> None:
    admission, _ = process(tables(4)[0], max_queued_tokens=100)
    admission.admit(1, 100)  # a quarter of the limit per process would refuse it
    with pytest.raises(PayloadTooLarge, match="max_queued_tokens is 100"):
        admission.admit(1, 101)


def test_keys_cover_every_version_directory_and_the_table_checks_its_size(tmp_path: Path) -> None:
    for name, version in (("b", 3), ("a", 1), ("a", 12)):
        (tmp_path / name / str(version)).mkdir(parents=True)
    (tmp_path / "a" / ".staging").mkdir()
    keys = queue_keys(tmp_path)
    assert keys == ["a/1", "a/1/streams", "a/12", "a/12/streams", "b/3", "b/3/streams"]
    assert queue_keys(tmp_path / "missing") == []
    cells = multiprocessing.get_context("spawn").RawArray("q", table_size(keys, 2) - 1)
    with pytest.raises(ValueError, match="does not fit"):
        QueueTable(cells, keys, 0, 2)
