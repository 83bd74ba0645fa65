"""SIGTERM when the drain itself fails: the error is logged with its traceback, what is queued is
answered, and the process exits (status 1) instead of waiting for SIGKILL.

The server runs in a process of its own (`tests/service/serve_with_failing_drain.py`): there
`ModelRegistry.drain` is patched to raise, then `seqserve serve`'s own entry point runs unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from tests.service.api.conftest import ROOT, Server, free_port, sigterm_while_queued, stop, wait_until
from tests.service.conftest import BuiltRepository
from tests.service.serve_with_failing_drain import FAULT


def test_a_drain_that_raises_is_logged_answers_what_is_queued_and_exits(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    root = tmp_path / "repository"
    shutil.copytree(test_repository.path / "feat", root / "feat")
    sequences = np.random.default_rng(33).normal(size=(4096, 40, 5)).round(3).tolist()
    port = free_port()
    flags = ["--repository", str(root), "--port", str(port), "--max-batch-size", "1", "--batch-workers", "1"]
    flags += ["--grace-period-seconds", "60", "--max-queue", "8192", "--max-sequences-per-request", "4096"]
    flags += ["--max-body-bytes", str(64 << 20), "--grpc-port", "0", "--http-workers", "1"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SEQSERVE_")}
    environment.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.service.serve_with_failing_drain", *flags],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until(lambda: _ready(server), timeout=90)
        response = sigterm_while_queued(server, sequences)
        # Well inside the 60 s grace period: nothing waits for it, or for a SIGKILL.
        try:
            status = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not exit after a failed drain:\n{server.log()}") from None
    finally:
        stop(process)
    assert status == 1, server.log()
    assert isinstance(response, httpx.Response), repr(response)
    assert response.status_code == 503 and response.json()["error"]["code"] == "draining"
    log_text = server.log()
    assert "draining failed" in log_text and "Traceback" in log_text and f"RuntimeError: {FAULT}" in log_text
    assert "Task exception was never retrieved" not in log_text


def _ready(server: Server) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()}")
    try:
        return httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
