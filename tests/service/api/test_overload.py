"""Overload and clients that leave: bounded queues answer 503 at once, every request gets one answer,
and work for a client that went away is dropped before compute."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.api.conftest import Server, run_server, sample_value, softmax, wait_until
from tests.service.conftest import BuiltRepository


@pytest.fixture(scope="module")
def feat_only(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("overload") / "repository"
    shutil.copytree(test_repository.path / "feat", root / "feat")
    return root


# Batches of one and room for a request of 2048 sequences: such a request keeps the worker busy for seconds.
ONE_AT_A_TIME = (
    "--max-batch-size",
    "1",
    "--max-sequences-per-request",
    "4096",
    "--max-queue",
    "4096",
    "--http-workers",
    "1",
)


@pytest.fixture(scope="module")
def small_queue_server(feat_only: Path) -> Iterator[Server]:
    # NOTE: two HTTP processes: the limits hold for both queues together (service/queue_totals.py)
    flags = ("--max-queue", "8", "--max-batch-size", "1", "--max-delay-ms", "0", "--http-workers", "2")
    with run_server(feat_only, *flags, log_dir=feat_only.parent) as running:
        yield running


def test_overload_gets_503_with_retry_after_and_every_request_one_answer(
    small_queue_server: Server, test_repository: BuiltRepository
) -> None:
    rng = np.random.default_rng(21)
    requests = [[rng.normal(size=(40, 5)).round(4).tolist() for _ in range(4)] for _ in range(64)]

    async def fire() -> list[httpx.Response | BaseException]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=small_queue_server.url, timeout=60, limits=limits) as client:
            calls = [client.post("/v1/models/feat/predict", json={"inputs": inputs}) for inputs in requests]
            return await asyncio.gather(*calls, return_exceptions=True)

    before = small_queue_server.metrics()
    answers = asyncio.run(fire())
    assert all(isinstance(a, httpx.Response) for a in answers), [
        a for a in answers if not isinstance(a, httpx.Response)
    ]
    responses: list[httpx.Response] = answers  # type: ignore[assignment]
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) > 0, "a queue of 8 sequences never overflowed under 64 requests of 4"
    assert statuses.count(200) > 0
    for inputs, response in zip(requests, responses, strict=True):
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "overloaded"
            continue
        for seq, output in zip(inputs, response.json()["outputs"], strict=True):
            expected = softmax(test_repository.references["feat"](seq))
            np.testing.assert_allclose(output["probabilities"], expected, atol=1e-4, rtol=0)
    after = small_queue_server.metrics()
    labels = {"model": "feat"}
    counted = {
        status: sample_value(after, "seqserve_requests_total", {**labels, "status": status})
        - sample_value(before, "seqserve_requests_total", {**labels, "status": status})
        for status in ("200", "503")
    }
    assert counted == {"200": statuses.count(200), "503": statuses.count(503)}
    assert httpx.post(f"{small_queue_server.url}/predict", json={"inputs": requests[0]}).status_code == 200


def test_a_client_that_leaves_has_its_queued_work_dropped(feat_only: Path, tmp_path: Path) -> None:
    """A request of 2048 sequences runs as 2048 batches of one; the client stops waiting after 0.3 s."""
    sequences = np.random.default_rng(22).normal(size=(2048, 40, 5)).round(3).tolist()
    with run_server(feat_only, *ONE_AT_A_TIME, "--max-body-bytes", str(64 << 20), log_dir=tmp_path) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.url}/v1/models/feat/predict", json={"inputs": sequences}, timeout=httpx.Timeout(60, read=0.3)
            )

        def dropped() -> float:
            return sample_value(server.metrics(), "seqserve_dropped_sequences_total", {"reason": "cancelled"})

        wait_until(lambda: dropped() > 0)
        wait_until(lambda: sample_value(server.metrics(), "seqserve_queue_depth") == 0)
        computed = sample_value(server.metrics(), "seqserve_batch_size_sum", {"model": "feat"})
        assert computed < 2048, "every sequence of the abandoned request was computed"
        answer = httpx.post(f"{server.url}/predict", json={"inputs": [sequences[0]]}, timeout=30)
        assert answer.status_code == 200
        assert sample_value(server.metrics(), "seqserve_requests_total", {"status": "499"}) == 1


def test_a_request_past_its_timeout_gets_504_and_its_work_is_dropped(feat_only: Path, tmp_path: Path) -> None:
    """2048 sequences as batches of one take longer than the 0.2 s request timeout."""
    sequences = np.random.default_rng(23).normal(size=(2048, 40, 5)).round(3).tolist()
    flags = (*ONE_AT_A_TIME, "--request-timeout-seconds", "0.2", "--max-body-bytes", str(64 << 20))
    with run_server(feat_only, *flags, log_dir=tmp_path) as server:
        response = httpx.post(f"{server.url}/v1/models/feat/predict", json={"inputs": sequences}, timeout=60)
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        wait_until(lambda: sample_value(server.metrics(), "seqserve_queue_depth") == 0)
        dropped = sample_value(server.metrics(), "seqserve_dropped_sequences_total", {"reason": "timeout"})
        assert dropped > 0
        answer = httpx.post(f"{server.url}/predict", json={"inputs": [sequences[0]]}, timeout=30)
        assert answer.status_code == 200


def test_a_request_larger_than_the_queue_is_refused_as_too_large(small_queue_server: Server) -> None:
    response = httpx.post(f"{small_queue_server.url}/predict", json={"inputs": [[[0.0] * 5]] * 9}, timeout=30)
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "inputs: 9 sequences, at most 8 per request"


def test_queued_time_steps_are_bounded_over_http(feat_only: Path, tmp_path: Path) -> None:
    flags = ("--max-queued-tokens", "60", "--max-batch-size", "1", "--max-delay-ms", "0", "--http-workers", "2")
    with run_server(feat_only, *flags, log_dir=tmp_path) as server:
        too_many = {"inputs": [[[0.0] * 5] * 31, [[0.0] * 5] * 30]}  # max_length is 40
        response = httpx.post(f"{server.url}/predict", json=too_many, timeout=30)
        assert response.status_code == 413
        assert response.json()["error"] == {
            "code": "payload_too_large",
            "message": "request has 61 time steps in all; max_queued_tokens is 60",
        }

        async def fire() -> list[int]:
            body = {"inputs": [[[0.1] * 5] * 40] * 1}  # 40 steps: a second one queued behind would pass 60
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                answers = await asyncio.gather(*(client.post("/predict", json=body) for _ in range(16)))
            for answer in answers:
                if answer.status_code == 503:
                    assert answer.headers["retry-after"] == "1"
                    assert "time steps queued (limit 60)" in answer.json()["error"]["message"]
            return [a.status_code for a in answers]

        statuses = asyncio.run(fire())
        assert set(statuses) == {200, 503}, statuses
        assert httpx.post(f"{server.url}/predict", json={"inputs": [[[0.1] * 5] * 40]}, timeout=30).status_code == 200
