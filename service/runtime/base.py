"""What every runtime is: the `Runtime` protocol, its errors, and the all-padding batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np

from service.model_json import ModelJson, RuntimeKind

DeviceKind = Literal["cpu", "cuda"]


class Runtime(Protocol):
    """Runs `[B, T, F]` float32 (or `[B, T]` int64 or int32 token ids) plus `lengths [B]`."""

    name: RuntimeKind
    device: DeviceKind
    # How many `predict` calls the runtime is set up to run at once (one per batch worker).
    concurrency: int
    # Static sizes of the graph's batch and time axes, when it fixes them.
    fixed_batch: int | None
    fixed_length: int | None

    def predict(self, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        """Blocking: the graph's output for the whole batch, `[B, C]` or `[B, T, C]`."""
        ...

    def warmup(self, shapes: Sequence[tuple[int, int]]) -> None:
        """Run zero batches of the given `(batch, time)` shapes so first requests are not slow."""
        ...


class StreamRuntime(Protocol):
    """Runs a model's stream graph (model.json `streaming`): one chunk per row, each row's recurrent
    state in and out. `predict` runs rows from the start of their streams (all-zero state)."""

    name: RuntimeKind
    device: DeviceKind
    concurrency: int
    fixed_batch: int | None
    fixed_length: int | None
    state_size: int

    def predict(self, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray: ...

    def predict_stream(
        self, batch: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Blocking: `(output [B, O] or [B, T, O], state_out [B, S])` for chunks `[B, T, ...]` with
        `lengths [B]` and `state [B, S]` float32."""
        ...

    def warmup(self, shapes: Sequence[tuple[int, int]]) -> None: ...


class RuntimeUnavailable(Exception):
    """The runtime's package is not installed; another format may still serve the entry."""


class DeviceUnavailable(Exception):
    """The runtime, once opened, cannot use the device it was told to use."""


def input_dtype(spec: ModelJson) -> type[np.generic]:
    """The NumPy type of the graph's input: float32 features, or int64 / int32 token ids."""
    dtypes: dict[str, type[np.generic]] = {"float32": np.float32, "int64": np.int64, "int32": np.int32}
    return dtypes[spec.graph.input_dtype]


def zero_batch(spec: ModelJson, batch: int, time: int) -> tuple[np.ndarray, np.ndarray]:
    """A padded input of the given shape (all padding) and its lengths, for warm-up and probes."""
    if spec.input.kind != "features":
        tokens = np.full((batch, time), spec.input.pad_value, dtype=input_dtype(spec))
        return tokens, np.full(batch, time, dtype=np.int64)
    assert spec.input.features is not None
    return np.zeros((batch, time, spec.input.features), dtype=np.float32), np.full(batch, time, dtype=np.int64)
