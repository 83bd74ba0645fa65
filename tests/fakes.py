"""Test doubles shared by the service tests: a recording fake runtime and a recording observer."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

import numpy as np

from service.model_json import RuntimeKind
from service.runtime import DeviceKind


class FakeRuntime:
    """Records every batch it runs. Its output for a row is [sum of the valid steps, valid length],
    computed from `lengths` (or the whole padded time axis when the graph takes none), so a test
    can tell exact padding from wrong padding; `per_step=True` outputs a running sum [B, T, 1]."""

    name: RuntimeKind = "onnx"
    device: DeviceKind = "cpu"
    concurrency: int = 1

    def __init__(
        self,
        *,
        per_step: bool = False,
        gate: threading.Event | None = None,
        fail_if: Callable[[np.ndarray], bool] | None = None,
        fail_with: str = "fake runtime failure",
        fixed_batch: int | None = None,
        fixed_length: int | None = None,
    ) -> None:
        self.per_step = per_step
        self.gate = gate
        self.fail_if = fail_if
        self.fail_with = fail_with
        self.fixed_batch = fixed_batch
        self.fixed_length = fixed_length
        self.calls: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.started = threading.Event()  # set when a batch has started (e.g. is waiting at the gate)
        self.warmed: list[tuple[int, int]] = []
        self.nice: list[int] = []  # the calling thread's nice value, per call

    def predict(self, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        self.calls.append((batch.copy(), None if lengths is None else lengths.copy()))
        self.nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        self.started.set()
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        if self.fail_if is not None and self.fail_if(batch):
            raise RuntimeError(self.fail_with)
        rows, time = batch.shape[0], batch.shape[1]
        valid = lengths if lengths is not None else np.full(rows, time)
        mask = np.arange(time)[None, :] < valid[:, None]  # [B, T]
        values = batch.reshape(rows, time, -1).sum(axis=2).astype(np.float64) * mask
        if self.per_step:
            return np.cumsum(values, axis=1)[:, :, None].astype(np.float32)
        return np.stack([values.sum(axis=1), valid], axis=1).astype(np.float32)

    def warmup(self, shapes: Sequence[tuple[int, int]]) -> None:
        self.warmed.extend(shapes)

    @property
    def batch_sizes(self) -> list[int]:
        return [len(batch) for batch, _ in self.calls]


class RecordingObserver:
    """A BatchObserver that keeps what it was told."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.waits: list[float] = []
        self.batches: list[tuple[int, int, int]] = []
        self.drops: dict[str, int] = {}

    def queue_depth(self, sequences: int) -> None:
        self.depths.append(sequences)

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def batch(self, size: int, padded_tokens: int, real_tokens: int, compute_seconds: float) -> None:
        self.batches.append((size, padded_tokens, real_tokens))

    def dropped(self, reason: str, sequences: int) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + sequences


class FakeStreamRuntime:
    """A stream graph that keeps a running sum: state [S=2] is (sum of every step so far, steps so far), the
    output of a row is its new state, or per step the running sum at each valid step [B, T, 1]. Exact padding
    and state carried per row show in the answers; `fail_if(batch)` fails a batch."""

    name: RuntimeKind = "onnx"
    device: DeviceKind = "cpu"
    concurrency: int = 1
    fixed_batch: int | None = None
    fixed_length: int | None = None
    state_size: int = 2

    def __init__(self, *, per_step: bool = False, fail_if: Callable[[np.ndarray], bool] | None = None) -> None:
        self.per_step = per_step
        self.fail_if = fail_if
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def predict_stream(
        self, batch: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((batch.copy(), lengths.copy(), state.copy()))
        if self.fail_if is not None and self.fail_if(batch):
            raise RuntimeError("fake stream failure")
        rows, time = batch.shape[0], batch.shape[1]
        mask = np.arange(time)[None, :] < lengths[:, None]
        values = batch.reshape(rows, time, -1).sum(axis=2) * mask
        new_state = np.stack([state[:, 0] + values.sum(axis=1), state[:, 1] + lengths], axis=1).astype(np.float32)
        if self.per_step:
            running = (state[:, :1] + np.cumsum(values, axis=1)) * mask
            return running[:, :, None].astype(np.float32), new_state
        return new_state.copy(), new_state

    def predict(self, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        assert lengths is not None
        return self.predict_stream(batch, lengths, np.zeros((len(batch), 2), dtype=np.float32))[0]

    def warmup(self, shapes: Sequence[tuple[int, int]]) -> None:
        pass
