"""GPU or CPU: the one place that decides, and the open that applies the decision.

`select_device` says what `auto`, `cpu` or `cuda` means for a runtime kind on this
machine. `open_runtime` opens the runtime on the chosen device and, when the GPU
fails to open or to prepare, opens it again on the CPU. Either way it returns why
the runtime got its device; the registry shows that as `/v1/models`' `device_reason`.
The runtimes themselves open on the device they are told and decide nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from service.model_json import ModelJson, RuntimeKind
from service.runtime.base import DeviceKind, DeviceUnavailable, Runtime, RuntimeUnavailable, StreamRuntime

log = logging.getLogger(__name__)

RequestedDevice = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class DeviceChoice:
    device: DeviceKind
    reason: str


@dataclass(frozen=True)
class ThreadSettings:
    onnx_threads: int = 0  # 0: the CPU cores divided among the batch workers
    torch_threads: int = 0  # 0: torch's default
    batch_workers: int = 0  # 0: the runtime's choice (ONNX Runtime on the CPU: one per core; else one)


def select_device(requested: RequestedDevice, runtime: RuntimeKind) -> DeviceChoice:
    """The only GPU-or-CPU decision: what `requested` means for `runtime` on this machine."""
    if requested == "cpu":
        return DeviceChoice("cpu", "device=cpu was requested")
    usable, why = _cuda_usable(runtime)
    if usable:
        return DeviceChoice("cuda", f"CUDA is usable ({why})")
    if requested == "cuda":
        log.warning("device=cuda was requested but %s is not usable for %s; using the CPU", why, runtime)
        return DeviceChoice("cpu", f"device=cuda was requested but {why}; fell back to the CPU")
    return DeviceChoice("cpu", f"no usable GPU ({why})")


def _cuda_usable(runtime: RuntimeKind) -> tuple[bool, str]:
    """Whether the runtime's package can reach a GPU, and what it says about it."""
    if runtime == "onnx":
        from service.runtime import onnx

        return onnx.cuda_available()
    try:
        from service.runtime import torchscript
    except ImportError as exc:
        raise RuntimeUnavailable(f"torch is not installed ({exc})") from exc
    return torchscript.cuda_available()


R = TypeVar("R", Runtime, StreamRuntime)


def open_runtime(
    kind: RuntimeKind,
    path: Path,
    spec: ModelJson,
    requested_device: RequestedDevice,
    threads: ThreadSettings,
    prepare: Callable[[R], None] | None = None,
    *,
    opener: Callable[[RuntimeKind, Path, ModelJson, DeviceKind, ThreadSettings], R] | None = None,
) -> tuple[R, str]:
    """Open `path` with runtime `kind`, then `prepare` it (warm-up, checks); returns the
    runtime and why it got its device. A failure on the GPU, opening or preparing, is
    retried on the CPU.

    Raises RuntimeUnavailable when the runtime's package is missing, and any
    other exception when the file can't be served. `opener` opens another kind of graph
    (`open_stream`: the stream graph).
    """
    open_file: Callable[[RuntimeKind, Path, ModelJson, DeviceKind, ThreadSettings], Any] = opener or _open

    def opened(device: DeviceKind) -> R:
        runtime: R = open_file(kind, path, spec, device, threads)
        if prepare is not None:
            prepare(runtime)
        return runtime

    choice = select_device(requested_device, kind)
    try:
        return opened(choice.device), choice.reason
    except DeviceUnavailable as exc:
        log.warning("%s/%s: %s; falling back to the CPU", spec.name, spec.version, exc)
        reason = f"{exc}; fell back to the CPU"
    except RuntimeUnavailable:
        raise
    except Exception as exc:
        if choice.device == "cpu":
            raise
        log.warning("%s/%s: opening on the GPU failed (%s); falling back to the CPU", spec.name, spec.version, exc)
        reason = f"opening on the GPU failed ({exc}); fell back to the CPU"
    return opened("cpu"), reason


def _open(kind: RuntimeKind, path: Path, spec: ModelJson, device: DeviceKind, threads: ThreadSettings) -> Runtime:
    if kind == "onnx":
        from service.runtime.onnx import OnnxRuntime

        return OnnxRuntime(path, spec, device=device, threads=threads.onnx_threads, concurrency=threads.batch_workers)
    try:
        from service.runtime.torchscript import TorchScriptRuntime
    except ImportError as exc:
        raise RuntimeUnavailable(f"torch is not installed ({exc})") from exc
    return TorchScriptRuntime(
        path, spec, device=device, threads=threads.torch_threads, concurrency=threads.batch_workers or 1
    )


def open_stream(
    kind: RuntimeKind, path: Path, spec: ModelJson, device: DeviceKind, threads: ThreadSettings
) -> StreamRuntime:
    """Open the stream graph (model.json `streaming`) with runtime `kind`: `open_runtime`'s `opener`."""
    if kind == "onnx":
        from service.runtime.onnx import OnnxStreamRuntime

        return OnnxStreamRuntime(
            path, spec, device=device, threads=threads.onnx_threads, concurrency=threads.batch_workers
        )
    try:
        from service.runtime.torchscript import TorchScriptStreamRuntime
    except ImportError as exc:
        raise RuntimeUnavailable(f"torch is not installed ({exc})") from exc
    return TorchScriptStreamRuntime(
        path, spec, device=device, threads=threads.torch_threads, concurrency=threads.batch_workers or 1
    )
