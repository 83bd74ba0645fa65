"""Stream state in a real Redis: the store's compare-and-set and limits, and replicas sharing streams."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.errors import TooManyStreams
from service.streams.redis import RedisStore
from service.streams.store import MemoryStore, StateStore, StreamRecord
from tests.service.api.conftest import run_server
from tests.service.streams.client import TOLERANCE, post_chunk
from tests.service.streams.conftest import StreamRepository
from tests.service.streams.redis_server import redis_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def record(position: int, epoch: str = "e1", status: str = "live", touched: float = 1000.0) -> StreamRecord:
    return StreamRecord(
        "m", 1, epoch, position, np.arange(4, dtype=np.float32).tobytes(), touched, 0, b"d", b"a", status
    )  # type: ignore[arg-type]


def stores(url: str) -> list[StateStore]:
    options = {"max_streams": 2, "idle_seconds": 10.0, "retention_seconds": 10.0}
    return [MemoryStore(**options), RedisStore(url, **options)]  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_store_compare_and_set_limit_and_expiry(redis_url: str, kind: str) -> None:
    async def run() -> None:
        store = stores(redis_url)[0 if kind == "memory" else 1]
        key = f"{kind}/s"
        try:
            assert await store.put(key, record(3), None, now=1000.0)
            assert not await store.put(key, record(3), None, now=1000.0)  # a live stream is there
            assert await store.get(key) == record(3)
            assert not await store.put(key, record(5), ("e1", 2), now=1000.0)  # wrong position
            assert not await store.put(key, record(5), ("e2", 3), now=1000.0)  # wrong epoch
            assert await store.put(key, record(5), ("e1", 3), now=1000.0)
            assert not await store.put(key, record(7), ("e1", 3), now=1000.0)  # the same step twice: once
            assert (await store.get(key)).position == 5  # type: ignore[union-attr]
            assert await store.put(f"{key}2", record(1), None, now=1000.0)
            with pytest.raises(TooManyStreams):
                await store.put(f"{key}3", record(1), None, now=1000.0)
            assert await store.live() == 2
            assert await store.expire_idle(1005.0) == 0
            assert await store.expire_idle(1011.0) == 2
            gone = await store.get(key)
            assert gone is not None and gone.status == "expired" and gone.state == b""
            assert await store.live() == 0
            assert not await store.put(key, record(7), ("e1", 5), now=1011.0)  # expired: no more chunks
            assert await store.put(key, record(1, "e3", touched=1011.0), None, now=1011.0)  # started again
        finally:
            await store.close()

    asyncio.run(run())


def test_replicas_share_streams_and_a_killed_replica_loses_none(
    stream_repository: StreamRepository, redis_url: str, tmp_path: Path
) -> None:
    """Two servers on one Redis: a stream's chunks alternate between them; a chunk whose answer was lost is
    retried on the other and answered once; duplicates sent to both at once are applied once; then one
    replica is killed with SIGKILL mid-stream and the other carries on."""
    entry = stream_repository.entries["gru-mean"]
    sequence = np.random.default_rng(9).normal(size=(40, 3)).round(4)
    env = {"SEQSERVE_STATE_URL": redis_url}
    with (
        run_server(stream_repository.path, log_dir=tmp_path, env=env) as one,
        run_server(stream_repository.path, log_dir=tmp_path, env=env) as two,
        httpx.Client(timeout=30) as client,
    ):
        urls = [one.url, two.url]

        def send(url: str, start: int, stop: int, end: bool = False) -> httpx.Response:
            client.base_url = httpx.URL(url)
            return post_chunk(
                client, entry.name, "shared", sequence[start:stop].tolist(), start=start == 0, end=end, offset=start
            )

        def check(response: httpx.Response, stop: int) -> None:
            assert response.status_code == 200, response.text
            want = entry.reference(sequence[:stop].astype(np.float32))
            assert np.abs(np.asarray(response.json()["output"]["probabilities"]) - want).max() <= TOLERANCE

        for i, start in enumerate(range(0, 20, 4)):
            check(send(urls[i % 2], start, start + 4), start + 4)
        retried = send(urls[1], 16, 20)  # the answer from `one` was lost: retry the same chunk on `two`
        check(retried, 20)
        assert retried.json()["replayed"] is True

        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the same chunk to both at once
            clients = [httpx.Client(base_url=url, timeout=30) for url in urls]
            answers = list(
                pool.map(lambda c: post_chunk(c, entry.name, "shared", sequence[20:24].tolist(), offset=20), clients)
            )
            for c in clients:
                c.close()
        assert all(a.status_code in (200, 409) for a in answers), [a.text for a in answers]
        assert sum(a.status_code == 200 and not a.json()["replayed"] for a in answers) == 1
        for a in answers:
            if a.status_code == 200:
                check(a, 24)

        one.process.send_signal(signal.SIGKILL)
        one.process.wait(timeout=10)
        check(send(urls[1], 24, 32), 32)
        check(send(urls[1], 32, 40, end=True), 40)
        status = httpx.get(f"{two.url}/v1/models/{entry.name}/streams/shared", timeout=10).json()
        assert status["status"] == "ended" and status["position"] == 40


def test_an_unreachable_redis_fails_chunks_with_503_and_nothing_else(
    stream_repository: StreamRepository, tmp_path: Path
) -> None:
    from tests.service.api.conftest import free_port

    env = {"SEQSERVE_STATE_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there
    with (
        run_server(stream_repository.path, log_dir=tmp_path, env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        chunk = post_chunk(client, "lstm-last", "s", [[0.1, 0.2, 0.3]], start=True)
        assert chunk.status_code == 503 and chunk.headers["retry-after"] == "1", chunk.text
        assert chunk.json()["error"]["code"] == "state_unavailable"
        whole = client.post("/v1/models/lstm-last/predict", json={"inputs": [[[0.1, 0.2, 0.3]]]})
        assert whole.status_code == 200
        assert client.get("/v1/models/lstm-last").json()["streaming"] is True
        assert client.get("/v1/models/bidi").json()["streaming"] is False
