"""Runtimes: what runs a padded batch through a model file.

A runtime is blocking and knows nothing of HTTP or batching. `select_device`
is the one place that decides between GPU and CPU; `open_runtime` applies
that choice and falls back to the CPU, with a warning, when the GPU fails.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from service.model_json import ModelJson, RuntimeKind

log = logging.getLogger(__name__)

DeviceKind = Literal["cpu", "cuda"]


class Runtime(Protocol):
    """Runs `[B, T, F]` float32 (or `[B, T]` int64 tokens) plus `lengths [B]`."""

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


class RuntimeUnavailable(Exception):
    """The runtime's package is not installed; another format may still serve the entry."""


class DeviceUnavailable(Exception):
    """The GPU was asked for but could not be used."""


@dataclass(frozen=True)
class DeviceChoice:
    device: DeviceKind
    reason: str


def select_device(requested: Literal["auto", "cpu", "cuda"], runtime: RuntimeKind) -> DeviceChoice:
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
    if runtime == "onnx":
        from service.runtime import onnx

        return onnx.cuda_available()
    try:
        from service.runtime import torchscript
    except ImportError as exc:
        raise RuntimeUnavailable(f"torch is not installed ({exc})") from exc
    return torchscript.cuda_available()


def lower_thread_priority(increment: int) -> None:
    """Lower the calling thread's CPU priority by `increment` (Linux nice; threads it starts inherit it).

    Compute threads (the batch workers, runtime thread pools) run below the event
    loop, so HTTP, health checks and load shedding stay prompt while a batch keeps
    every core busy; when the loop is idle the compute threads get all the CPU.
    """
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as exc:  # pragma: no cover - raising nice is always allowed on Linux
        log.warning("could not lower the compute threads' priority: %s", exc)


@dataclass(frozen=True)
class ThreadSettings:
    onnx_threads: int = 0  # 0: the CPU cores divided among the batch workers
    torch_threads: int = 0  # 0: torch's default
    batch_workers: int = 0  # 0: the runtime's choice (ONNX Runtime on the CPU: one per core; else one)


def cpu_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPU cores this process may use: those it may run on, capped by a container's CPU quota
    (a Kubernetes `limits.cpu`, `docker run --cpus`), rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores, quota)) if quota is not None else cores


def _cgroup_cpu_quota(root: Path) -> int | None:
    """The CPU quota in whole cores (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else math.ceil(int(quota) / int(period))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return math.ceil(quota_us / period_us) if quota_us > 0 and period_us > 0 else None


def open_runtime(
    kind: RuntimeKind,
    path: Path,
    spec: ModelJson,
    requested_device: Literal["auto", "cpu", "cuda"],
    threads: ThreadSettings,
    prepare: Callable[[Runtime], None] | None = None,
) -> tuple[Runtime, str]:
    """Open `path` with runtime `kind`, then `prepare` it (warm-up, checks); returns the
    runtime and why it got its device. A failure on the GPU, opening or preparing, is
    retried on the CPU.

    Raises RuntimeUnavailable when the runtime's package is missing, and any
    other exception when the file can't be served.
    """

    def opened(device: DeviceKind) -> Runtime:
        runtime = _open(kind, path, spec, device, threads)
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


def zero_batch(spec: ModelJson, batch: int, time: int) -> tuple[np.ndarray, np.ndarray]:
    """A padded input of the given shape (all padding) and its lengths, for warm-up and probes."""
    if spec.input.kind == "text":
        assert spec.input.tokenizer is not None
        tokens = np.full((batch, time), spec.input.tokenizer.padding_id, dtype=np.int64)
        return tokens, np.full(batch, time, dtype=np.int64)
    assert spec.input.features is not None
    return np.zeros((batch, time, spec.input.features), dtype=np.float32), np.full(batch, time, dtype=np.int64)
