"""Runtimes: what runs a padded batch through a model file.

A runtime is blocking and knows nothing of HTTP or batching. One module, one job:
`base` (the `Runtime` protocol, its errors, `zero_batch`), `device` (the GPU-or-CPU
decision and `open_runtime`, which falls back to the CPU), `cpu` (cores and compute
thread priority), `onnx` and `torchscript` (one runtime each, imported on demand).
"""

from service.runtime.base import (
    DeviceKind,
    DeviceUnavailable,
    Runtime,
    RuntimeUnavailable,
    StreamRuntime,
    input_dtype,
    zero_batch,
)
from service.runtime.cpu import cpu_cores, lower_thread_priority
from service.runtime.device import (
    DeviceChoice,
    RequestedDevice,
    ThreadSettings,
    open_runtime,
    open_stream,
    select_device,
)

__all__ = [
    "DeviceChoice",
    "DeviceKind",
    "DeviceUnavailable",
    "RequestedDevice",
    "Runtime",
    "RuntimeUnavailable",
    "StreamRuntime",
    "ThreadSettings",
    "cpu_cores",
    "input_dtype",
    "lower_thread_priority",
    "open_runtime",
    "open_stream",
    "select_device",
    "zero_batch",
]
