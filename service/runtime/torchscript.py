"""TorchScript runtime: the one module of the server that imports torch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from service.model_json import ModelJson, RuntimeKind
from service.runtime.base import DeviceKind, zero_batch

log = logging.getLogger(__name__)


def cuda_available() -> tuple[bool, str]:
    """Whether torch sees a CUDA device (`service.runtime.device` decides)."""
    if torch.cuda.is_available():
        return True, f"torch sees {torch.cuda.get_device_name(0)}"
    return False, "torch.cuda.is_available() is false"


class TorchScriptRuntime:
    name: RuntimeKind = "torchscript"
    fixed_batch: int | None = None
    fixed_length: int | None = None

    def __init__(self, path: Path, spec: ModelJson, *, device: DeviceKind, threads: int, concurrency: int = 1) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self._spec = spec
        self._device = torch.device(device)
        self.device: DeviceKind = device
        self.concurrency = concurrency
        self._module = torch.jit.load(str(path), map_location=self._device)  # type: ignore[no-untyped-call]
        self._module.eval()
        self._uses_lengths = spec.graph.lengths is not None

    def predict(self, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self._device)
            if self._uses_lengths:
                assert lengths is not None
                out = self._module(x, torch.from_numpy(lengths).to(self._device))
            else:
                out = self._module(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            result: np.ndarray = out.detach().to("cpu").numpy()
        return result

    def warmup(self, shapes: Sequence[tuple[int, int]]) -> None:
        # NOTE: the TorchScript profiling executor specialises a graph on its
        # second run of a shape; run each twice so requests get the fast path.
        for batch, time in shapes:
            for _ in range(2):
                self.predict(*zero_batch(self._spec, batch, time))


class TorchScriptStreamRuntime:
    """The stream graph of a version (model.json `streaming`) as TorchScript:
    `forward(input, lengths, state_in) -> (output, state_out)`."""

    name: RuntimeKind = "torchscript"
    fixed_batch: int | None = None
    fixed_length: int | None = None

    def __init__(self, path: Path, spec: ModelJson, *, device: DeviceKind, threads: int, concurrency: int = 1) -> None:
        assert spec.streaming is not None
        if threads > 0:
            torch.set_num_threads(threads)
        self._spec = spec
        self._device = torch.device(device)
        self.device: DeviceKind = device
        self.concurrency = concurrency
        self.state_size = spec.streaming.state_size
        self._module = torch.jit.load(str(path), map_location=self._device)  # type: ignore[no-untyped-call]
        self._module.eval()

    def predict_stream(
        self, batch: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            device = self._device
            output, state_out = self._module(
                torch.from_numpy(batch).to(device),
                torch.from_numpy(lengths).to(device),
                torch.from_numpy(state).to(device),
            )
            return output.detach().to("cpu").numpy(), state_out.detach().to("cpu").numpy()

    def predict(self, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        if lengths is None:
            lengths = np.full(batch.shape[0], batch.shape[1], dtype=np.int64)
        state = np.zeros((batch.shape[0], self.state_size), dtype=np.float32)
        return self.predict_stream(batch, lengths, state)[0]

    def warmup(self, shapes: Sequence[tuple[int, int]]) -> None:
        for batch, time in shapes:  # twice each: see TorchScriptRuntime.warmup
            for _ in range(2):
                self.predict(*zero_batch(self._spec, batch, time))
