"""ONNX Runtime: the default runtime (fastest on CPU, CUDA provider on a GPU)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.model_json import ModelJson, RuntimeKind
from service.runtime.base import DeviceKind, DeviceUnavailable, RuntimeUnavailable, zero_batch
from service.runtime.cpu import cpu_cores

try:
    import onnxruntime as ort
except ImportError as _exc:  # pragma: no cover - onnxruntime is a runtime dependency
    raise RuntimeUnavailable(f"onnxruntime is not installed ({_exc})") from _exc

log = logging.getLogger(__name__)

_ORT_DTYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "int32": "tensor(int32)"}
_LENGTHS_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def cuda_available() -> tuple[bool, str]:
    """Whether this onnxruntime build has the CUDA provider (`service.runtime.device` decides)."""
    # NOTE: onnxruntime-gpu lists CUDAExecutionProvider even without the CUDA
    # libraries; a session opened for CUDA checks its own providers.
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return True, "onnxruntime lists CUDAExecutionProvider"
    return False, "onnxruntime has no CUDAExecutionProvider"


class OnnxRuntime:
    name: RuntimeKind = "onnx"

    def __init__(
        self, path: Path, spec: ModelJson, *, device: DeviceKind, threads: int = 0, concurrency: int = 0
    ) -> None:
        """`concurrency` batches run at once (0: one per CPU core on the CPU, one on a GPU), each
        on `threads` intra-op threads (0: the CPU cores divided among them)."""
        self._spec = spec
        graph = spec.graph
        # NOTE: on the CPU, one single-threaded batch per core beats one batch on every core:
        # a recurrent step is a small matrix product, and a thread pool that splits each step
        # waits at a barrier per step, idling a core whenever one of its threads is preempted
        # (by the event loop, or by another process).
        self.concurrency, self._session = open_session(path, device, threads, concurrency)
        self.device: DeviceKind = device

        inputs = {i.name: i for i in self._session.get_inputs()}
        wanted = [graph.input] + ([graph.lengths] if graph.lengths else [])
        problems = [f"graph has no input '{name}'" for name in wanted if name not in inputs]
        problems += [f"graph input '{name}' is not named in model.json" for name in inputs if name not in wanted]
        outputs = [o.name for o in self._session.get_outputs()]
        if graph.output not in outputs:
            problems.append(f"graph has no output '{graph.output}' (it has {outputs})")
        if graph.input in inputs and inputs[graph.input].type != _ORT_DTYPES[graph.input_dtype]:
            problems.append(
                f"graph input '{graph.input}' is {inputs[graph.input].type}, model.json says {graph.input_dtype}"
            )
        if graph.lengths and graph.lengths in inputs and inputs[graph.lengths].type not in _LENGTHS_DTYPES:
            problems.append(f"graph input '{graph.lengths}' is {inputs[graph.lengths].type}, expected int64 or int32")
        if problems:
            raise ValueError("; ".join(problems))

        shape = inputs[graph.input].shape
        self.fixed_batch = shape[0] if len(shape) > 0 and isinstance(shape[0], int) and shape[0] > 0 else None
        self.fixed_length = shape[1] if len(shape) > 1 and isinstance(shape[1], int) and shape[1] > 0 else None
        self._input = graph.input
        self._lengths = graph.lengths
        self._lengths_dtype = _LENGTHS_DTYPES[inputs[graph.lengths].type] if graph.lengths else np.int64
        self._output = [graph.output]
        # NOTE: a failed run raises, and the batch worker logs it with the request's error id; ONNX
        # Runtime's own copy of the message (an out-of-range token id, say) would only repeat it.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4

    def predict(self, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        feeds = {self._input: batch}
        if self._lengths is not None:
            assert lengths is not None
            feeds[self._lengths] = lengths.astype(self._lengths_dtype, copy=False)
        result: np.ndarray = self._session.run(self._output, feeds, self._run_options)[0]
        return result

    def warmup(self, shapes: Sequence[tuple[int, int]]) -> None:
        for batch, time in shapes:
            self.predict(*zero_batch(self._spec, batch, time))


class OnnxStreamRuntime:
    """The stream graph of a version (model.json `streaming`): chunks in, each row's state in and out."""

    name: RuntimeKind = "onnx"
    fixed_batch: int | None = None
    fixed_length: int | None = None

    def __init__(
        self, path: Path, spec: ModelJson, *, device: DeviceKind, threads: int = 0, concurrency: int = 0
    ) -> None:
        assert spec.streaming is not None
        stream = spec.streaming
        self._spec = spec
        self.concurrency, self._session = open_session(path, device, threads, concurrency)
        self.device: DeviceKind = device

        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        wanted = {
            stream.input: _ORT_DTYPES[spec.graph.input_dtype],
            stream.lengths: "tensor(int64)",
            stream.state_in: "tensor(float)",
        }
        problems = [f"stream graph has no input '{name}'" for name in wanted if name not in inputs]
        problems += [f"stream graph input '{name}' is not named in model.json" for name in inputs if name not in wanted]
        problems += [
            f"stream graph input '{name}' is {inputs[name].type}, expected {dtype}"
            for name, dtype in wanted.items()
            if name in inputs and inputs[name].type != dtype
        ]
        problems += [
            f"stream graph has no output '{name}' (it has {outputs})"
            for name in (stream.output, stream.state_out)
            if name not in outputs
        ]
        if problems:
            raise ValueError("; ".join(problems))
        self.state_size = stream.state_size
        self._names = (stream.input, stream.lengths, stream.state_in)
        self._outputs = [stream.output, stream.state_out]

    def predict_stream(
        self, batch: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        feeds = dict(zip(self._names, (batch, lengths, state), strict=True))
        output, state_out = self._session.run(self._outputs, feeds)
        return output, state_out

    def predict(self, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        if lengths is None:
            lengths = np.full(batch.shape[0], batch.shape[1], dtype=np.int64)
        state = np.zeros((batch.shape[0], self.state_size), dtype=np.float32)
        return self.predict_stream(batch, lengths, state)[0]

    def warmup(self, shapes: Sequence[tuple[int, int]]) -> None:
        for batch, time in shapes:
            self.predict(*zero_batch(self._spec, batch, time))


def open_session(path: Path, device: DeviceKind, threads: int, concurrency: int) -> tuple[int, ort.InferenceSession]:
    """An ONNX Runtime session for `path` on `device`, and how many batches run at once on it: `concurrency`
    (0: one per CPU core on the CPU, one on a GPU), each on `threads` intra-op threads (0: the cores divided
    among them)."""
    cores = cpu_cores()
    concurrency = concurrency or (cores if device == "cpu" else 1)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or max(1, cores // concurrency)
    options.inter_op_num_threads = 1
    # NOTE: spinning pool threads would compete with the event loop for the
    # few cores of a typical replica between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
    # NOTE: ONNX Runtime drops a provider it cannot enable and runs on the CPU without raising.
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise DeviceUnavailable("ONNX Runtime could not enable CUDAExecutionProvider")
    return concurrency, session
