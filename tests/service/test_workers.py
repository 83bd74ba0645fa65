"""Several HTTP worker processes on one port (`--http-workers`): one server to its clients, its operator and
its orchestrator."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from service.runtime.cpu import cpu_cores
from service.settings import Settings
from service.workers import PROCESS_BYTES, Peers, auto_worker_count, worker_count, worker_settings
from tests.service.api.conftest import run_server, sample_value, sigterm_while_queued, softmax, wait_until
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
    # queued when the drain began: answered whole, and its connection closed (no request may follow on it)
    assert response.headers["connection"] == "close"
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


def test_each_worker_keeps_the_whole_queue_limits_and_both_ports() -> None:
    # the workers hold the limits together through their queue table (tests/service/test_queue_totals.py)
    settings = Settings(max_queue=1000, max_queued_tokens=90_001, grpc_port=8001, http_workers=3)
    worker = worker_settings(settings, 3, 8123)
    assert (worker.max_queue, worker.max_queued_tokens) == (1000, 90_001)
    assert (worker.port, worker.grpc_port, worker.http_workers) == (8123, 8001, 3)
    assert worker.api_key == settings.api_key


def test_a_taken_grpc_port_stops_the_server_before_any_worker_starts(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    # every worker listens on the gRPC port with SO_REUSEPORT: the parent takes it first, so a port another
    # program holds fails the start as a taken HTTP port does, rather than leave some workers without gRPC
    root = _feat_only(test_repository, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {"SEQSERVE_GRPC_PORT": str(taken.getsockname()[1])}
        with (
            pytest.raises(RuntimeError, match="server exited with 1") as failed,
            run_server(root, "--http-workers", "2", log_dir=tmp_path, env=env),
        ):
            pass
    assert "gRPC: cannot listen on 127.0.0.1" in str(failed.value) and "[http 0]" not in str(failed.value)


def test_a_request_may_be_as_large_with_several_workers_as_with_one(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    # Divided among 4 processes, max_queue 64 let a request hold 16 sequences and max_queued_tokens 400 let it
    # hold 100 time steps. Each process must take what one process takes, from any of them, and refuse past it.
    root = _feat_only(test_repository, tmp_path)
    rng = np.random.default_rng(7)
    limits = ("--max-queue", "64", "--max-queued-tokens", "400", "--max-sequences-per-request", "256")
    with run_server(root, "--http-workers", "4", *limits, log_dir=tmp_path) as server:
        for _ in range(4):  # a connection per request: the kernel spreads them over the processes
            with httpx.Client(base_url=server.url, timeout=60) as client:
                many = [rng.normal(size=(5, 5)).round(3).tolist() for _ in range(40)]  # 40 sequences, 200 steps
                answer = client.post("/v1/models/feat/predict", content=orjson.dumps({"inputs": many}))
                assert answer.status_code == 200, answer.text
                assert len(answer.json()["outputs"]) == 40
                long = [rng.normal(size=(38, 5)).round(3).tolist() for _ in range(10)]  # 380 time steps in all
                answer = client.post("/v1/models/feat/predict", content=orjson.dumps({"inputs": long}))
                assert answer.status_code == 200, answer.text
        with httpx.Client(base_url=server.url, timeout=60) as client:
            too_many = [[[0.5] * 5] for _ in range(65)]
            refused = client.post("/v1/models/feat/predict", content=orjson.dumps({"inputs": too_many}))
            assert refused.status_code == 422 and "at most 64 per request" in refused.text, refused.text
            too_long = [rng.normal(size=(40, 5)).round(3).tolist() for _ in range(10)] + [[[0.5] * 5]]  # 401 steps
            refused = client.post("/v1/models/feat/predict", content=orjson.dumps({"inputs": too_long}))
            assert refused.status_code == 413 and "max_queued_tokens is 400" in refused.text, refused.text


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


def test_a_worker_that_finds_the_others_ready_shows_itself_ready_to_them_first() -> None:
    # Worker 1 is ready but its periodic publish has not run yet: asking the others must not leave worker 0
    # answering "not ready" after worker 1 has answered ready.
    flags = multiprocessing.get_context("spawn").RawArray("b", 2)
    flags[0] = 1
    first, second = Peers(flags, 0, lambda: (True, [])), Peers(flags, 1, lambda: (True, []))
    assert second() == []
    assert first() == []


def test_the_repository_api_needs_one_process() -> None:
    with pytest.raises(ValidationError, match="repository_api needs http_workers=1"):
        Settings(repository_api=True, http_workers=2)
    assert worker_count(Settings(repository_api=True)) == (1, "repository_api needs one process")


def test_auto_is_one_process_per_core_unless_one_is_what_works(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    feat = _feat_only(test_repository, tmp_path)
    plenty = 64 << 30

    def auto(repository: Path, cores: int = 8, memory: int | None = plenty, gpu: bool = False, **kw: object) -> int:
        return auto_worker_count(Settings(repository=repository, **kw), cores, memory, gpu)[0]  # type: ignore[arg-type]

    assert auto(feat) == 8 and auto(feat, cores=1) == 1 and auto(feat, memory=None) == 8
    assert auto(feat, repository_api=True) == 1
    assert auto(feat, gpu=True) == 1 and auto(feat, gpu=True, device="cpu") == 8
    # Models that stream do not change it: without Redis the first process holds the streams (the others forward).
    assert auto(test_repository.path) == 8 and auto(test_repository.path, state_url="redis://127.0.0.1:6379/0") == 8
    # Half the available memory bounds the count: ~150 MiB per process plus twice the model files.
    model_bytes = sum(f.stat().st_size for f in feat.rglob("*") if f.suffix in (".onnx", ".pt"))
    per_process = PROCESS_BYTES + 2 * model_bytes
    assert auto(feat, memory=2 * 3 * per_process) == 3 and auto(feat, memory=per_process) == 1


def test_the_default_serves_a_small_repository_from_a_process_per_core(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    cores = cpu_cores()
    with run_server(_feat_only(test_repository, tmp_path), "--log-level", "info", log_dir=tmp_path) as server:
        answer = httpx.post(f"{server.url}/v1/models/feat/predict", json={"inputs": [[[0.1] * 5] * 4]}, timeout=30)
        assert answer.status_code == 200
        log = server.log()
    assert f"{cores} HTTP process" in log, log
    assert ("[http 1]" in log) == (cores > 1)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_end_when_their_parent_is_killed(test_repository: BuiltRepository, tmp_path: Path) -> None:
    """A parent killed by SIGKILL passes no signal on: its workers must not keep serving the port as orphans."""
    with run_server(_feat_only(test_repository, tmp_path), "--http-workers", "2", log_dir=tmp_path) as server:
        workers = [pid for pid in _children(server.process.pid) if "resource_tracker" not in _name(pid)]
        assert len(workers) == 2, _children(server.process.pid)
        try:
            server.process.kill()
            server.process.wait(timeout=10)
            wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=30)
        finally:
            for pid in workers:  # only this test's own workers, by PID
                with contextlib.suppress(ProcessLookupError):
                    if _alive(pid):
                        os.kill(pid, signal.SIGKILL)


def _name(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""
