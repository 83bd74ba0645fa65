"""SIGTERM under load: readiness off at once, queued and in-flight requests finish, exit status 0."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
from pathlib import Path

import httpx
import numpy as np
import orjson

from tests.service.api.conftest import run_server, sample_value, sigterm_while_queued, softmax, wait_until
from tests.service.conftest import BuiltRepository

REQUESTS = 24
SEQUENCES = 192  # as batches of one, enough work that draining outlasts the checks below


def test_sigterm_under_load_loses_nothing(test_repository: BuiltRepository, tmp_path: Path) -> None:
    root = tmp_path / "repository"
    shutil.copytree(test_repository.path / "feat", root / "feat")
    rng = np.random.default_rng(31)
    requests = [[rng.normal(size=(40, 5)).round(4).tolist() for _ in range(SEQUENCES)] for _ in range(REQUESTS)]
    # Encoded up front: the bodies reach the server faster than it can compute them, so work is queued.
    bodies = [orjson.dumps({"inputs": inputs}) for inputs in requests]
    workers = 2  # batches of one computing at once, neither queued nor counted as computed
    flags = (
        "--max-batch-size",
        "1",
        "--batch-workers",
        str(workers),
        "--grace-period-seconds",
        "60",
        "--max-queue",
        "8192",
    )
    with run_server(root, *flags, log_dir=tmp_path) as server:
        responses: list[httpx.Response | BaseException] = []

        async def fire() -> None:
            limits = httpx.Limits(max_connections=REQUESTS)
            async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
                headers = {"content-type": "application/json"}
                calls = [client.post("/v1/models/feat/predict", content=body, headers=headers) for body in bodies]
                responses.extend(await asyncio.gather(*calls, return_exceptions=True))

        idle = httpx.Client(base_url=server.url, timeout=10)  # a keep-alive connection, idle when SIGTERM comes
        assert idle.get("/v1/models").status_code == 200
        load = threading.Thread(target=asyncio.run, args=(fire(),))
        load.start()
        try:

            def submitted() -> float:
                metrics = server.metrics()
                computed = sample_value(metrics, "seqserve_batch_size_sum", {"model": "feat"})
                return sample_value(metrics, "seqserve_queue_depth", {"model": "feat"}) + computed

            wait_until(lambda: submitted() >= REQUESTS * SEQUENCES - workers)  # every request queued or running
            server.process.send_signal(signal.SIGTERM)

            ready = httpx.get(f"{server.url}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
            assert ready.headers["retry-after"] == "1"
            refused = httpx.post(f"{server.url}/predict", json={"inputs": requests[0][:1]}, timeout=10)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
            assert refused.headers["retry-after"] == "1"
            # While draining every answer closes its connection, so that no keep-alive client sends a request on
            # one the server is about to close: the idle connection's next request is told so, and goes elsewhere
            # (test_workers.py checks the answer to a request queued when the drain began).
            again = idle.post("/predict", json={"inputs": requests[0][:1]})
            assert again.status_code == 503 and again.headers["connection"] == "close"
            assert refused.headers["connection"] == "close" and ready.headers["connection"] == "close"
        finally:
            idle.close()
            load.join(timeout=120)
        assert server.process.wait(timeout=60) == 0, server.log()

    assert len(responses) == REQUESTS
    for inputs, response in zip(requests, responses, strict=True):
        assert isinstance(response, httpx.Response), repr(response)
        assert response.status_code == 200, response.text
        outputs = response.json()["outputs"]
        for seq, output in zip(inputs[:3], outputs, strict=False):
            expected = softmax(test_repository.references["feat"](seq))
            np.testing.assert_allclose(output["probabilities"], expected, atol=1e-4, rtol=0)
    log = server.log()
    assert "draining" in log and "drained: every queued request answered" in log


def test_past_the_grace_period_what_is_left_gets_503_and_the_process_exits_0(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    """4096 sequences as batches of one take longer than a 0.5 s grace period."""
    root = tmp_path / "repository"
    shutil.copytree(test_repository.path / "feat", root / "feat")
    sequences = np.random.default_rng(32).normal(size=(4096, 40, 5)).round(3).tolist()
    flags = ("--max-batch-size", "1", "--grace-period-seconds", "0.5", "--max-queue", "8192", "--http-workers", "1")
    flags += ("--max-sequences-per-request", "4096", "--max-body-bytes", str(64 << 20))
    with run_server(root, *flags, log_dir=tmp_path) as server:
        response = sigterm_while_queued(server, sequences)
        assert server.process.wait(timeout=60) == 0, server.log()
    assert isinstance(response, httpx.Response), repr(response)
    assert response.status_code == 503 and response.json()["error"]["code"] == "draining"
    assert response.headers["connection"] == "close"
    assert "grace period over" in server.log()
