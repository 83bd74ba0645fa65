"""The worker side, called directly as a worker thread would: padding, unpadding, failure isolation."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from service.batching.worker import BatchWorker
from tests.fakes import FakeRuntime

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def make(runtime: FakeRuntime, *, pad_value: float = 0.0, uses_lengths: bool = True) -> BatchWorker:
    return BatchWorker(runtime, pad_value=pad_value, dtype=np.float32, uses_lengths=uses_lengths, name="fake/1")


def seq(length: int, value: float = 1.0, features: int = 2) -> np.ndarray:
    return np.full((length, features), value, dtype=np.float32)


def values(outputs: list[np.ndarray | BaseException]) -> list[object]:
    return [o if isinstance(o, BaseException) else o.tolist() for o in outputs]


@dataclass
class Work:
    sequence: np.ndarray
    gone: bool = False

    def ended(self) -> bool:
        return self.gone


class KeepingRuntime(FakeRuntime):
    """Keeps the padded arrays it was given, not copies: shows which buffer a batch was padded in."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[np.ndarray] = []

    def predict(self, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        self.inputs.append(batch)
        return super().predict(batch, lengths)


def test_sequences_are_padded_with_the_pad_value_and_their_lengths_fed() -> None:
    runtime = FakeRuntime()
    outputs = make(runtime, pad_value=-1.0).run([seq(3, 1.0), seq(1, 2.0), seq(5, 0.5)])
    assert values(outputs) == [[6.0, 3.0], [4.0, 1.0], [5.0, 5.0]]
    [(batch, lengths)] = runtime.calls
    assert batch.shape == (3, 5, 2) and lengths is not None and lengths.tolist() == [3, 1, 5]
    assert (batch[1, 1:] == -1.0).all() and (batch[0, 3:] == -1.0).all()
    assert (batch[1, :1] == 2.0).all()


def test_without_lengths_no_lengths_are_fed() -> None:
    runtime = FakeRuntime()
    make(runtime, uses_lengths=False).run([seq(2), seq(2)])
    [(_, lengths)] = runtime.calls
    assert lengths is None


def test_per_step_outputs_are_cut_to_each_sequence() -> None:
    short, long = make(FakeRuntime(per_step=True)).run([seq(2), seq(4)])
    assert isinstance(short, np.ndarray) and isinstance(long, np.ndarray)
    assert short.shape == (2, 1) and long.shape == (4, 1)
    assert long[:, 0].tolist() == [2.0, 4.0, 6.0, 8.0]


def test_a_fixed_batch_runtime_gets_its_rows_filled_and_answers_only_the_real_ones() -> None:
    runtime = FakeRuntime(fixed_batch=4)
    outputs = make(runtime).run([seq(3, 1.0), seq(1, 2.0)])
    assert values(outputs) == [[6.0, 3.0], [4.0, 1.0]]
    [(batch, lengths)] = runtime.calls
    assert batch.shape == (4, 3, 2) and (batch[2:] == 0).all()
    assert lengths is not None and lengths.tolist() == [3, 1, 3, 3]  # filler rows: full length


def test_a_runtime_answering_the_wrong_number_of_rows_fails_the_batch() -> None:
    class Short(FakeRuntime):
        def predict(self, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
            return super().predict(batch, lengths)[:0]

    [error] = make(Short()).run([seq(2)])
    assert isinstance(error, ValueError) and "0 rows for a batch of 1" in str(error)


def test_a_batch_out_of_memory_is_split_in_halves_down_to_one_sequence() -> None:
    runtime = FakeRuntime(fail_if=lambda batch: len(batch) > 2 or bool((batch == 666.0).any()), fail_with=OOM)
    worker = make(runtime)
    assert values(worker.run([seq(3, float(v)) for v in range(1, 9)])) == [[6.0 * v, 3.0] for v in range(1, 9)]
    assert runtime.batch_sizes == [8, 4, 2, 2, 4, 2, 2]
    runtime.calls.clear()
    bad, *good = worker.run([seq(2, 666.0), seq(2, 1.0), seq(2, 2.0), seq(2, 3.0)])
    assert isinstance(bad, RuntimeError) and OOM in str(bad)
    assert values(good) == [[4.0, 2.0], [8.0, 2.0], [12.0, 2.0]]
    assert runtime.batch_sizes == [4, 2, 1, 1, 2]  # halves of halves; the 666 alone still fails


def test_one_bad_sequence_fails_only_itself_retried_one_by_one() -> None:
    runtime = FakeRuntime(fail_if=lambda batch: bool((batch == 666.0).any()))
    outputs = make(runtime).run([seq(2, 1.0), seq(2, 666.0), seq(2, 2.0), seq(2, 3.0)])
    assert isinstance(outputs[1], RuntimeError)
    assert values(outputs[:1] + outputs[2:]) == [[4.0, 2.0], [8.0, 2.0], [12.0, 2.0]]
    assert runtime.batch_sizes == [4, 1, 1, 1, 1]


def test_sequences_whose_requests_ended_are_skipped() -> None:
    runtime = FakeRuntime()
    worker = make(runtime)
    outcome = worker.compute([Work(seq(2, 1.0)), Work(seq(3, 7.0), gone=True), Work(seq(1, 2.0))])
    assert [None if o is None else values([o])[0] for o in outcome.outputs] == [[4.0, 2.0], None, [4.0, 1.0]]
    assert runtime.batch_sizes == [2] and outcome.compute_seconds > 0
    nothing = worker.compute([Work(seq(2), gone=True)])
    assert list(nothing.outputs) == [None] and nothing.compute_seconds == 0.0
    assert runtime.batch_sizes == [2]


def test_each_thread_pads_into_a_buffer_of_its_own_reused_across_its_batches() -> None:
    runtime = KeepingRuntime()
    worker = make(runtime)
    worker.run([seq(4), seq(4)])
    worker.run([seq(3)])  # smaller: the same buffer
    thread = threading.Thread(target=worker.run, args=([seq(3)],))
    thread.start()
    thread.join()
    first, second, other = runtime.inputs
    assert np.shares_memory(first, second)
    assert not np.shares_memory(first, other)
