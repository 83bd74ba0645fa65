"""Several HTTP worker processes on one port (`--http-workers`): one server to its clients, its operator and
its orchestrator."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from service.settings import Settings
from service.workers import Peers, worker_settings
from tests.service.api.conftest import run_server, sample_value, sigterm_while_queued, softmax
from tests.service.conftest import BuiltRepository


def _feat_only(test_repository: BuiltRepository, tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    shutil.copytree(test_repository.path / "feat", root / "feat")
    return root


def test_two_workers_answer_exactly_and_show_one_metrics_view(test_repository: BuiltRepository, tmp_path: Path) -> None:
    root = _feat_only(test_repository, tmp_path)
    rng = np.random.default_rng(41)
    inputs = [[rng.normal(size=(int(n), 5)).round(4).tolist()] for n in rng.integers(3, 30, size=48)]
    with run_server(root, "--http-workers", "2", "--max-delay-ms", "5", log_dir=tmp_path) as server:
        responses: list[httpx.Response] = []

        async def fire() -> None:
            # A connection per request: the kernel spreads new connections over both workers.
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
                calls = [client.post("/v1/models/feat/predict", content=orjson.dumps({"inputs": i})) for i in inputs]
                responses.extend(await asyncio.gather(*calls))

        asyncio.run(fire())
        for sequences, response in zip(inputs, responses, strict=True):
            assert response.status_code == 200, response.text
            [output] = response.json()["outputs"]
            expected = softmax(test_repository.references["feat"](sequences[0]))
            np.testing.assert_allclose(output["probabilities"], expected, atol=1e-4, rtol=0)
        # Whichever worker answers /metrics, it counts every answer of both.
        for _ in range(6):
            with httpx.Client(base_url=server.url, timeout=10) as fresh:  # a new connection each time
                metrics = fresh.get("/metrics").text
            assert sample_value(metrics, "seqserve_requests_total", {"model": "feat", "status": "200"}) == 48
            assert sample_value(metrics, "seqserve_batch_size_sum", {"model": "feat"}) == 48
            assert sample_value(metrics, "seqserve_ready") == 1
        assert httpx.get(f"{server.url}/readyz", timeout=10).json() == {"ready": True}
        log = server.log()
        assert "[http 0]" in log and "[http 1]" in log, log


def test_sigterm_drains_every_worker_and_the_server_exits_0(test_repository: BuiltRepository, tmp_path: Path) -> None:
    root = _feat_only(test_repository, tmp_path)
    sequences = np.random.default_rng(42).normal(size=(600, 40, 5)).round(3).tolist()
    flags = ("--http-workers", "2", "--max-batch-size", "1", "--grace-period-seconds", "60", "--max-queue", "4096")
    flags += ("--max-sequences-per-request", "1024", "--max-body-bytes", str(64 << 20))
    with run_server(root, *flags, log_dir=tmp_path) as server:
        response = sigterm_while_queued(server, sequences)
        assert server.process.wait(timeout=90) == 0, server.log()
    assert isinstance(response, httpx.Response), repr(response)
    assert response.status_code == 200, response.text
    assert len(response.json()["outputs"]) == 600
    log = server.log()
    for worker in (0, 1):
        assert f"INFO service.runner [http {worker}]: SIGTERM received" in log, log


def test_a_worker_that_dies_takes_the_server_down_with_status_1(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    root = _feat_only(test_repository, tmp_path)
    with run_server(root, "--http-workers", "2", log_dir=tmp_path) as server:
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        workers = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert server.process.wait(timeout=60) == 1, server.log()
    assert "ended on its own" in server.log()


def test_queue_limits_hold_in_total_and_grpc_is_served_once() -> None:
    settings = Settings(max_queue=1000, max_queued_tokens=90_001, grpc_port=8001, http_workers=3)
    workers = [worker_settings(settings, 3, index, 8123) for index in range(3)]
    assert sum(w.max_queue for w in workers) <= 1000
    assert sum(w.max_queued_tokens for w in workers) <= 90_001
    assert [w.grpc_port for w in workers] == [8001, 0, 0]
    assert {w.port for w in workers} == {8123}
    assert {w.api_key for w in workers} == {settings.api_key}


def test_readiness_needs_every_worker() -> None:
    flags = multiprocessing.get_context("spawn").RawArray("b", 3)
    ready = [True]
    peers = Peers(flags, 1, lambda: (ready[0], []))
    peers.publish()
    assert list(flags) == [0, 1, 0]
    assert peers() == ["HTTP worker 0 not ready", "HTTP worker 2 not ready"]
    flags[0] = flags[2] = 1
    assert peers() == []
    ready[0] = False
    peers.publish()
    assert list(flags) == [1, 0, 1]


def test_the_repository_api_needs_one_process() -> None:
    with pytest.raises(ValidationError, match="repository_api needs http_workers=1"):
        Settings(repository_api=True, http_workers=2)
    assert Settings(repository_api=True).http_workers == 1
