"""The CPU this process may use: how many cores, and compute threads below the event loop."""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)


_sharing = 1  # server processes the cores are divided among (`share_cores`)


def share_cores(processes: int) -> None:
    """Divide the cores among `processes` server processes: from now on `cpu_cores` is this process's share."""
    global _sharing
    _sharing = max(1, processes)


def cpu_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPU cores this process may use: those it may run on, capped by a container's CPU quota
    (a Kubernetes `limits.cpu`, `docker run --cpus`), rounded up; its share of them when several
    server processes divide them (`share_cores`)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    cores = max(1, min(cores, quota)) if quota is not None else cores
    return max(1, cores // _sharing)


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
