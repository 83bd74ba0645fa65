"""Servers for HTTP tests: `python -m service` started on 127.0.0.1 and a free port, killed by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import BuiltRepository

ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT_SECONDS = 90.0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self, headers: dict[str, str] | None = None) -> str:
        return httpx.get(f"{self.url}/metrics", headers=headers, timeout=10).text


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll `condition`; a guard against hanging, not a speed check."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def run_server(
    repository: Path,
    *flags: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> Iterator[Server]:
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SEQSERVE_")}
    environment.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "SEQSERVE_GRPC_PORT": "0", **(env or {})})
    command = [sys.executable, "-m", "service", "--repository", str(repository), "--port", str(port), *flags]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_until_up(server, ready=wait_ready)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """End the server this test started, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_up(server: Server, *, ready: bool) -> None:
    path = "/readyz" if ready else "/healthz"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server not up after {START_TIMEOUT_SECONDS} s:\n{server.log()}")


@pytest.fixture(scope="session")
def server(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared server over the test repository, for tests that only read and predict."""
    with run_server(test_repository.path, "--max-delay-ms", "5", log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return result


def sample_value(metrics: str, sample: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples named `sample` whose labels include `labels` (le compared as numbers)."""
    wanted = dict(labels or {})
    le = float(wanted.pop("le")) if "le" in wanted else None
    total = 0.0
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name != sample or any(s.labels.get(k) != v for k, v in wanted.items()):
                continue
            if le is not None and float(s.labels["le"]) != le:
                continue
            total += s.value
    return total


def batch_counts(server: Server, model: str) -> tuple[float, float]:
    """(batches, batches of exactly one sequence) the server ran for `model`, all versions."""
    metrics = server.metrics()
    labels = {"model": model}
    return (
        sample_value(metrics, "seqserve_batch_size_count", labels),
        sample_value(metrics, "seqserve_batch_size_bucket", {**labels, "le": "1"}),
    )


def sigterm_while_queued(server: Server, sequences: list[list[list[float]]]) -> httpx.Response | BaseException:
    """POST `sequences` to /predict, send the server SIGTERM once some of them are queued, and return the
    answer (or the client's error) once the request ends."""
    answer: list[httpx.Response | BaseException] = []

    def post() -> None:
        try:
            answer.append(httpx.post(f"{server.url}/predict", json={"inputs": sequences}, timeout=120))
        except httpx.HTTPError as exc:
            answer.append(exc)

    client = threading.Thread(target=post)
    client.start()
    try:
        wait_until(lambda: sample_value(server.metrics(), "seqserve_queue_depth") > 0)
        server.process.send_signal(signal.SIGTERM)
    finally:
        client.join(timeout=120)
    [response] = answer
    return response
