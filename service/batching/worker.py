"""What a worker thread does with one batch: pad it, run the runtime, cut the outputs back,
and, when the batch fails, find which sequences fail so that only their requests do.

Plain blocking code: no event loop. The batcher calls `compute` on its worker threads;
one `BatchWorker` serves them all, each thread padding into a buffer of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.runtime import Runtime, StreamRuntime

log = logging.getLogger(__name__)

Output = np.ndarray | BaseException  # a sequence's output, or why it has none


class Work(Protocol):
    """One sequence handed to a worker."""

    @property
    def sequence(self) -> np.ndarray: ...

    @property
    def state(self) -> np.ndarray | None:
        """A stream chunk's recurrent state in, `[S]`; None for a whole sequence."""
        ...

    def ended(self) -> bool:
        """Whether its request ended meanwhile (then it is not computed)."""
        ...


@dataclass(frozen=True)
class Outcome:
    outputs: Sequence[Output | None]  # per sequence; None: its request had ended before compute
    compute_seconds: float


class BatchWorker:
    """Runs batches of whole sequences through `runtime`, or, with `stream`, batches of stream chunks
    through the stream graph: each row's state goes in beside its chunk, and each row's output comes
    back packed as `state_out [S]` followed by its output, flattened (see `unpack_stream`)."""

    def __init__(
        self,
        runtime: Runtime | StreamRuntime,
        *,
        pad_value: float | int,
        dtype: type[np.generic],
        uses_lengths: bool,
        name: str,
        stream: bool = False,
    ) -> None:
        self._runtime = runtime
        self._stream: StreamRuntime | None = runtime if stream else None  # type: ignore[assignment]
        self._pad_value = pad_value
        self._dtype = dtype
        self._uses_lengths = uses_lengths
        self._name = name
        self._buffers = threading.local()  # per worker thread: padded batches, reused (see _padding_buffer)

    def compute(self, batch: Sequence[Work]) -> Outcome:
        """Run a batch, skipping the sequences whose requests ended while it waited for a worker."""
        live = [i for i, work in enumerate(batch) if not work.ended()]
        if len(live) < len(batch):
            outcome = self._timed([batch[i] for i in live]) if live else Outcome([], 0.0)
            outputs: list[Output | None] = [None] * len(batch)
            for i, output in zip(live, outcome.outputs, strict=True):
                outputs[i] = output
            return Outcome(outputs, outcome.compute_seconds)
        return self._timed(batch)

    def _timed(self, batch: Sequence[Work]) -> Outcome:
        started = time.perf_counter()
        states = [work.state for work in batch] if self._stream is not None else None
        outputs = self.run([work.sequence for work in batch], states)  # type: ignore[arg-type]
        return Outcome(outputs, time.perf_counter() - started)

    def run(self, sequences: list[np.ndarray], states: list[np.ndarray] | None = None) -> list[Output]:
        """One output per sequence, or the exception that failed it. If the batch fails, find who
        fails: a batch out of memory is split in halves and retried (down to one sequence), any
        other failure is retried one by one, so that one bad sequence fails only its own request."""
        try:
            return list(self._run_batch(sequences, states))
        except Exception as exc:
            if len(sequences) == 1:
                return [exc]
            if _out_of_memory(exc):
                half = len(sequences) // 2
                log.warning("model %s ran out of memory on a batch of %d; splitting it", self._name, len(sequences))
                first, second = (None, None) if states is None else (states[:half], states[half:])
                return self.run(sequences[:half], first) + self.run(sequences[half:], second)
            log.warning("model %s failed on a batch of %d; retrying one by one", self._name, len(sequences))
            outputs: list[Output] = []
            for i, seq in enumerate(sequences):
                try:
                    outputs.extend(self._run_batch([seq], None if states is None else [states[i]]))
                except Exception as single:
                    outputs.append(single)
            return outputs

    def _padding_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous `shape` view of the calling thread's buffer, reused across its batches
        (a thread pads one batch at a time, and runtimes do not keep their input)."""
        size = int(np.prod(shape))
        buffer: np.ndarray | None = getattr(self._buffers, "padded", None)
        if buffer is None or buffer.size < size:
            buffer = np.empty(max(size, 0 if buffer is None else 2 * buffer.size), dtype=self._dtype)
            self._buffers.padded = buffer
        return buffer[:size].reshape(shape)

    def _run_batch(self, sequences: list[np.ndarray], states: list[np.ndarray] | None) -> list[np.ndarray]:
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
        if self._stream is not None:
            assert states is not None and feed_lengths is not None
            return self._run_stream(padded, feed_lengths, np.stack(states), rows)
        out = np.asarray(self._runtime.predict(padded, feed_lengths))
        if out.shape[0] != padded_rows:
            raise ValueError(f"runtime returned {out.shape[0]} rows for a batch of {padded_rows}")
        if out.ndim >= 3:  # per-step output [B, T, C]: drop the padded steps
            if out.shape[1] != longest:
                raise ValueError(f"runtime returned {out.shape[1]} steps for a batch of {longest}")
            return [out[row, : lengths[row]] for row in range(rows)]
        return [out[row] for row in range(rows)]

    def _run_stream(self, padded: np.ndarray, lengths: np.ndarray, states: np.ndarray, rows: int) -> list[np.ndarray]:
        assert self._stream is not None
        out, state_out = self._stream.predict_stream(padded, lengths, states.astype(np.float32, copy=False))
        out, state_out = np.asarray(out, dtype=np.float32), np.asarray(state_out, dtype=np.float32)
        if out.shape[0] != rows or state_out.shape != states.shape:
            raise ValueError(
                f"stream graph returned output {list(out.shape)} and state {list(state_out.shape)} "
                f"for {rows} rows of state {list(states.shape)}"
            )
        if out.ndim >= 3:  # per-step output [B, T, C]: drop the padded steps
            return [np.concatenate([state_out[row], out[row, : lengths[row]].ravel()]) for row in range(rows)]
        return [np.concatenate([state_out[row], out[row].ravel()]) for row in range(rows)]


def unpack_stream(packed: np.ndarray, state_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A stream chunk's packed result: `(state_out [S], output flattened)`."""
    return packed[:state_size], packed[state_size:]


_OUT_OF_MEMORY = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation")


def _out_of_memory(exc: BaseException) -> bool:
    """A runtime's out-of-memory error (torch's `CUDA out of memory`, ONNX Runtime's `Failed to
    allocate memory`): a smaller batch may fit."""
    return isinstance(exc, MemoryError) or any(mark in str(exc).lower() for mark in _OUT_OF_MEMORY)
