"""Start seqserve on 127.0.0.1 as a child process, watch its CPU, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds of a process: its main thread (event loop: HTTP, parsing, validation,
    serialising) and every other thread (the batch workers and ONNX Runtime's pool)."""

    main: float
    others: float

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.main - other.main, self.others - other.others)

    @property
    def total(self) -> float:
        return self.main + self.others


def _thread_cpu(stat_path: str) -> float:
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for tid in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return found


class Server:
    def __init__(
        self,
        repository: Path,
        *,
        name: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        source: Path | None = None,
        grpc: bool = False,
        module: str = "service",
        **settings: object,
    ) -> None:
        """`source`: run the `service` package of another checkout (e.g. a git worktree of an
        older commit) instead of this one's. `grpc`: also serve gRPC, on `grpc_port` (else off, so
        that servers side by side don't contend for its default port). `module`: what `python -m` runs
        (`bench.sleeping_runtime`: the server with its model's computation replaced by a sleep)."""
        self.name = name
        self.port = free_port()
        self.grpc_port = free_port() if grpc else 0
        env = {**os.environ, **(env or {}), "SEQSERVE_GRPC_PORT": str(self.grpc_port)}
        env.update({f"SEQSERVE_{k.upper()}": str(v) for k, v in settings.items()})
        env.update(
            SEQSERVE_PORT=str(self.port), SEQSERVE_HOST="127.0.0.1", SEQSERVE_LOG_LEVEL="warning", SEQSERVE_DEVICE="cpu"
        )
        if source is not None:
            env["PYTHONPATH"] = str(source.resolve())
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--repository", str(repository.resolve())],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=source,
        )

    def wait_ready(self, timeout_seconds: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.process.returncode}; see {self._log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server {self.name} not ready within {timeout_seconds:g} s")

    def cpu(self) -> CpuSample:
        """CPU of the server and its child processes (HTTP workers): main threads apart from the others."""
        main = others = 0.0
        for pid in _process_tree(self.process.pid):
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue  # the process ended meanwhile
            for tid in tids:
                try:
                    seconds = _thread_cpu(f"/proc/{pid}/task/{tid}/stat")
                except OSError:
                    continue  # the thread ended meanwhile
                if int(tid) == pid:
                    main += seconds
                else:
                    others += seconds
        return CpuSample(main, others)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
