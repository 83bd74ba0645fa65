"""Streams over real HTTP: every chunk's answer equals the user's module on the sequence so far, for random
chunkings, through /v1 and through tritonclient's V2 sequence parameters; and the 4xx cases."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from tests.service.api.conftest import Server, run_server, sample_value
from tests.service.streams.client import (
    TOLERANCE,
    check_random_chunkings,
    check_stream,
    post_chunk,
    random_chunking,
    random_sequence,
    triton_sender,
    v1_sender,
)
from tests.service.streams.conftest import StreamRepository
from tests.service.streams.graphs import StreamEntry

MODELS = ["lstm-last", "gru-mean", "lstm-max", "gru-tagger", "text-lstm"]


def test_random_chunkings_equal_the_module_on_the_whole_sequence(
    stream_server: Server, stream_repository: StreamRepository
) -> None:
    """Many streams at once (their chunks batched together, padded next to each other), each chunked at
    random, one of them longer than the model's max_length; every chunk's answer is checked."""
    rng = np.random.default_rng(7)
    jobs: list[tuple[StreamEntry, str, Any, list[int]]] = []
    for name in MODELS:
        entry = stream_repository.entries[name]
        for i in range(6):
            length = 150 if i == 0 else int(rng.integers(1, 40))  # 150 > max_length 64: only a stream serves it
            sequence = random_sequence(entry, length, rng)
            jobs.append((entry, f"{name}-{i}", sequence, random_chunking(length, rng, largest=20)))
    before = sample_value(stream_server.metrics(), "seqserve_batch_size_count")
    with (
        httpx.Client(base_url=stream_server.url, timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(12) as pool,
    ):
        worst = list(pool.map(lambda job: check_stream(job[0], v1_sender(client, job[0]), *job[1:]), jobs))
    assert max(worst) <= TOLERANCE, worst
    metrics = stream_server.metrics()
    batches = sample_value(metrics, "seqserve_batch_size_count") - before
    chunks = sum(len(job[3]) for job in jobs)
    assert batches < chunks, "no two chunks ever shared a batch"
    assert sample_value(metrics, "seqserve_streams_ended_total") >= len(jobs)


def test_every_model_through_the_checking_helper(stream_server: Server, stream_repository: StreamRepository) -> None:
    """`check_random_chunkings`, as an end-to-end test points it at any repository's model."""
    for i, name in enumerate(MODELS):
        entry = stream_repository.entries[name]
        assert check_random_chunkings(stream_server.url, entry, streams=3, seed=i) <= TOLERANCE


@pytest.mark.parametrize("name", ["lstm-last", "gru-tagger"])
def test_tritonclient_sequence_parameters(
    stream_server: Server, stream_repository: StreamRepository, name: str
) -> None:
    entry = stream_repository.entries[name]
    rng = np.random.default_rng(11)
    client = triton.InferenceServerClient(stream_server.url.removeprefix("http://"))
    try:
        for i, stream in enumerate([4242, "sensor-7"]):  # sequence_id as an integer and as a string
            sequence = random_sequence(entry, 30, rng)
            sizes = random_chunking(30, rng, largest=9) if i else [1, 4, 25]
            assert check_stream(entry, triton_sender(client, entry), stream, sequence, sizes) <= TOLERANCE
    finally:
        client.close()


def test_integer_sequence_id_without_offset(stream_server: Server, stream_repository: StreamRepository) -> None:
    """tritonclient's infer unchanged: no offset, the server derives it."""
    entry = stream_repository.entries["lstm-last"]
    sequence = np.random.default_rng(3).normal(size=(12, 3)).astype(np.float32)
    client = triton.InferenceServerClient(stream_server.url.removeprefix("http://"))
    try:
        for start in range(0, 12, 4):
            tensor = triton.InferInput("input", [1, 4, 3], "FP32")
            tensor.set_data_from_numpy(sequence[None, start : start + 4])
            result = client.infer(
                entry.name, [tensor], sequence_id=77, sequence_start=start == 0, sequence_end=start == 8
            )
        values = result.as_numpy("values")
        assert values is not None
        assert np.abs(values[0] - entry.reference(sequence)).max() <= TOLERANCE
    finally:
        client.close()


def test_unknown_stream_is_404_naming_it(stream_server: Server) -> None:
    with httpx.Client(base_url=stream_server.url, timeout=30) as client:
        response = post_chunk(client, "lstm-last", "never-started", [[0.0, 0.0, 0.0]])
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "stream_not_found"
        assert "never-started" in response.json()["error"]["message"]
        v2 = client.post(
            "/v2/models/lstm-last/infer",
            json={
                "inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [0, 0, 0]}],
                "parameters": {"sequence_id": 999001, "sequence_start": False, "sequence_end": False},
            },
        )
        assert v2.status_code == 404 and "999001" in v2.json()["error"], v2.text


def test_bidirectional_model_refuses_a_stream(stream_server: Server) -> None:
    with httpx.Client(base_url=stream_server.url, timeout=30) as client:
        response = post_chunk(client, "bidi", "s1", [[0.0] * 5], start=True)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "streaming_unsupported"
        assert "bidirectional" in response.json()["error"]["message"]
        v2 = client.post(
            "/v2/models/bidi/infer",
            json={
                "inputs": [{"name": "input", "shape": [1, 1, 5], "datatype": "FP32", "data": [0] * 5}],
                "parameters": {"sequence_id": "s1", "sequence_start": True},
            },
        )
        assert v2.status_code == 400 and "whole sequence" in v2.json()["error"], v2.text


def test_out_of_order_chunk_is_409_and_a_retried_chunk_is_answered_once(
    stream_server: Server, stream_repository: StreamRepository
) -> None:
    entry = stream_repository.entries["lstm-last"]
    sequence = np.random.default_rng(5).normal(size=(9, 3)).round(4).tolist()
    with httpx.Client(base_url=stream_server.url, timeout=30) as client:
        first = post_chunk(client, entry.name, "ordered", sequence[:3], start=True, offset=0)
        assert first.status_code == 200
        gap = post_chunk(client, entry.name, "ordered", sequence[6:], offset=6)
        assert gap.status_code == 409
        assert gap.json()["error"]["code"] == "stream_conflict"
        assert "ordered" in gap.json()["error"]["message"] and "step 3" in gap.json()["error"]["message"]
        second = post_chunk(client, entry.name, "ordered", sequence[3:6], offset=3)
        retried = post_chunk(client, entry.name, "ordered", sequence[3:6], offset=3)  # its answer was "lost"
        assert retried.status_code == 200 and retried.json()["replayed"] is True
        assert retried.json()["output"] == second.json()["output"]
        assert retried.json()["position"] == 6
        stale = post_chunk(client, entry.name, "ordered", sequence[:3], offset=0)  # an older chunk: not the last
        assert stale.status_code == 409
        different = post_chunk(client, entry.name, "ordered", sequence[6:], offset=3)  # other steps at offset 3
        assert different.status_code == 409
        last = post_chunk(client, entry.name, "ordered", sequence[6:], end=True, offset=6)
        assert last.status_code == 200
        want = entry.reference(np.asarray(sequence, dtype=np.float32))
        assert np.abs(np.asarray(last.json()["output"]["values"]) - want).max() <= TOLERANCE
        again = post_chunk(client, entry.name, "ordered", sequence[6:], end=True, offset=6)  # retried last chunk
        assert again.status_code == 200 and again.json()["output"] == last.json()["output"]
        after = post_chunk(client, entry.name, "ordered", sequence[6:], offset=9)
        assert after.status_code == 404 and "ended" in after.json()["error"]["message"]
        metrics = stream_server.metrics()
        assert sample_value(metrics, "seqserve_stream_chunks_total", {"model": entry.name, "outcome": "replayed"}) >= 2


def test_start_and_end_in_one_request_and_bad_chunks(
    stream_server: Server, stream_repository: StreamRepository
) -> None:
    entry = stream_repository.entries["gru-mean"]
    sequence = np.random.default_rng(6).normal(size=(5, 3)).round(4).tolist()
    with httpx.Client(base_url=stream_server.url, timeout=30) as client:
        whole = post_chunk(client, entry.name, "oneshot", sequence, start=True, end=True)
        assert whole.status_code == 200 and whole.json()["ended"] is True
        want = entry.reference(np.asarray(sequence, dtype=np.float32))
        assert np.abs(np.asarray(whole.json()["output"]["probabilities"]) - want).max() <= TOLERANCE
        assert post_chunk(client, entry.name, "x", sequence, start=True, offset=2).status_code == 422
        bad = post_chunk(client, entry.name, "x", [[1.0, 2.0]], start=True)
        assert bad.status_code == 422 and "steps[0]" in bad.json()["error"]["message"]
        two = client.post(
            f"/v2/models/{entry.name}/infer",
            json={
                "inputs": [{"name": "input", "shape": [2, 1, 3], "datatype": "FP32", "data": [0] * 6}],
                "parameters": {"sequence_id": 5, "sequence_start": True},
            },
        )
        assert two.status_code == 422 and "batch of one" in two.json()["error"]
        status = client.get(f"/v1/models/{entry.name}/streams/oneshot")
        assert status.status_code == 200 and status.json()["status"] == "ended"


def test_live_stream_limit_and_idle_expiry(stream_repository: StreamRepository, tmp_path: Any) -> None:
    from tests.service.api.conftest import run_server, wait_until

    env = {"SEQSERVE_MAX_STREAMS": "2", "SEQSERVE_STREAM_IDLE_SECONDS": "1"}
    with (
        run_server(stream_repository.path, log_dir=tmp_path, env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        step = [[0.1, 0.2, 0.3]]
        assert post_chunk(client, "lstm-last", "a", step, start=True).status_code == 200
        assert post_chunk(client, "lstm-last", "b", step, start=True).status_code == 200
        third = post_chunk(client, "lstm-last", "c", step, start=True)
        assert third.status_code == 429 and third.headers["retry-after"] == "1", third.text
        assert third.json()["error"]["code"] == "too_many_streams"
        assert sample_value(server.metrics(), "seqserve_streams_live") == 2
        wait_until(lambda: sample_value(server.metrics(), "seqserve_streams_expired_total") == 2, timeout=30)
        late = post_chunk(client, "lstm-last", "a", step, offset=1)
        assert late.status_code == 404 and "expired" in late.json()["error"]["message"], late.text
        assert sample_value(server.metrics(), "seqserve_streams_live") == 0
        assert post_chunk(client, "lstm-last", "c", step, start=True).status_code == 200  # room again
        assert client.delete("/v1/models/lstm-last/streams/c").status_code == 200
        assert post_chunk(client, "lstm-last", "c", step, offset=1).status_code == 404
        assert sample_value(server.metrics(), "seqserve_streams_started_total") == 3


def test_200_concurrent_streams(stream_server: Server, stream_repository: StreamRepository) -> None:
    """200 streams live at once, their chunks interleaved; every answer exact, every stream ended."""
    import asyncio

    entry = stream_repository.entries["lstm-last"]
    rng = np.random.default_rng(200)
    sequences = [rng.normal(size=(int(rng.integers(4, 24)), 3)).round(4) for _ in range(200)]
    chunkings = [random_chunking(len(seq), rng, largest=8) for seq in sequences]

    async def one(client: httpx.AsyncClient, i: int) -> float:
        sequence, offset, worst = sequences[i], 0, 0.0
        for k, size in enumerate(chunkings[i]):
            body = {
                "steps": sequence[offset : offset + size].tolist(),
                "start": k == 0,
                "end": k == len(chunkings[i]) - 1,
                "offset": offset,
            }
            response = await client.post(f"/v1/models/{entry.name}/streams/many-{i}", json=body)
            assert response.status_code == 200, response.text
            offset += size
            want = entry.reference(sequence[:offset].astype(np.float32))
            worst = max(worst, float(np.abs(np.asarray(response.json()["output"]["values"]) - want).max()))
            await asyncio.sleep(0)
        return worst

    async def run() -> list[float]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=stream_server.url, timeout=120, limits=limits) as client:
            return list(await asyncio.gather(*(one(client, i) for i in range(200))))

    before = sample_value(stream_server.metrics(), "seqserve_streams_ended_total", {"model": entry.name})
    assert max(asyncio.run(run())) <= TOLERANCE
    after = sample_value(stream_server.metrics(), "seqserve_streams_ended_total", {"model": entry.name})
    assert after - before == 200


def test_a_retry_without_offset_is_known_by_its_request_id(
    stream_server: Server, stream_repository: StreamRepository
) -> None:
    """What nginx does when a replica dies after applying a chunk: the same request, X-Request-ID included,
    sent again; without an offset the chunk is recognised by its request id and not applied twice."""
    entry = stream_repository.entries["lstm-last"]
    sequence = np.random.default_rng(8).normal(size=(6, 3)).round(4)
    with httpx.Client(base_url=stream_server.url, timeout=30) as client:
        url = f"/v1/models/{entry.name}/streams/by-request-id"
        client.post(url, json={"steps": sequence[:3].tolist(), "start": True}, headers={"X-Request-ID": "r1"})
        first = client.post(url, json={"steps": sequence[3:].tolist()}, headers={"X-Request-ID": "r2"})
        again = client.post(url, json={"steps": sequence[3:].tolist()}, headers={"X-Request-ID": "r2"})
        assert first.status_code == again.status_code == 200
        assert again.json()["replayed"] is True and again.json()["position"] == 6
        want = entry.reference(sequence.astype(np.float32))
        assert np.abs(np.asarray(again.json()["output"]["values"]) - want).max() <= TOLERANCE
        applied = client.post(url, json={"steps": sequence[3:].tolist()}, headers={"X-Request-ID": "r3"})
        assert applied.json()["replayed"] is False and applied.json()["position"] == 9  # a new request: applied


def test_streams_across_http_processes_without_redis(stream_repository: StreamRepository, tmp_path: Path) -> None:
    """Two HTTP processes and no Redis: the first holds every stream, the other forwards its stream requests to it.
    Every request on a new connection (the kernel spreads them over both processes): each chunk's answer, over /v1
    and through tritonclient (binary outputs too), equals the user's module; a stream's status and its end work
    from either process; each chunk is applied and counted once; a chunked body, which cannot be forwarded whole,
    is answered by the first process or refused by the other, saying what to send."""
    entry = stream_repository.entries["gru-tagger"]
    rng = np.random.default_rng(2024)
    with run_server(stream_repository.path, "--http-workers", "2", "--max-delay-ms", "2", log_dir=tmp_path) as server:
        host = server.url.removeprefix("http://")

        def over_v1(stream: str, steps: Any, start: bool, end: bool, offset: int) -> np.ndarray:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                return v1_sender(client, entry)(stream, steps, start, end, offset)

        def over_triton(stream: str, steps: Any, start: bool, end: bool, offset: int) -> np.ndarray:
            client = triton.InferenceServerClient(host)
            try:
                return triton_sender(client, entry, binary=offset % 2 == 1)(stream, steps, start, end, offset)
            finally:
                client.close()

        sent = 0
        for stream, send in (("fwd-v1", over_v1), ("fwd-v2", over_triton), (31337, over_triton)):
            sequence = random_sequence(entry, 40, rng)
            sizes = [1] * 8 + random_chunking(32, rng, largest=6)
            assert check_stream(entry, send, stream, sequence, sizes) <= TOLERANCE  # type: ignore[arg-type]
            sent += len(sizes)
        live = random_sequence(entry, 5, rng)
        assert over_v1("fwd-live", live, True, False, 0).shape[0] == 5
        sent += 1
        for _ in range(8):
            status = httpx.get(f"{server.url}/v1/models/{entry.name}/streams/fwd-live", timeout=30)
            assert status.status_code == 200 and status.json()["position"] == 5, status.text
        assert httpx.delete(f"{server.url}/v1/models/{entry.name}/streams/fwd-live", timeout=30).status_code == 200
        for _ in range(4):
            status = httpx.get(f"{server.url}/v1/models/{entry.name}/streams/fwd-live", timeout=30)
            assert status.json()["status"] == "ended", status.text
        applied = sample_value(server.metrics(), "seqserve_stream_chunks_total", {"outcome": "applied"})
        assert applied == sent
        statuses = set()
        for i in range(8):  # chunked: the first process answers it; the other cannot forward it and says why
            body = iter([orjson.dumps({"steps": random_sequence(entry, 2, rng), "start": True, "end": True})])
            answer = httpx.post(f"{server.url}/v1/models/{entry.name}/streams/chunked-{i}", content=body, timeout=30)
            statuses.add(answer.status_code)
            assert answer.status_code == 200 or "Content-Length" in answer.json()["error"]["message"], answer.text
        assert statuses <= {200, 400}
        log = server.log()
    assert "[http 1]" in log
