"""Overload, open loop: measure the saturation rate with a closed loop, then offer 4x that rate on a
fixed schedule whatever the answers. The server sheds with 503 + Retry-After, every request gets one
answer, the process lives with bounded memory, and once the load stops requests are served at once.

CI offers the load for 3 s (`SEQSERVE_OVERLOAD_SECONDS`, e.g. 30 for the recorded run:
`SEQSERVE_OVERLOAD_SECONDS=30 pytest tests/service/api/test_open_loop.py -s`). Latencies are
recorded, not asserted: the figures print at the end (`-s`).

NOTE: the client runs on the server's machine (2 cores in CI): it falls behind the schedule it
offers, so latencies measured from the scheduled send include the client's own lag, and the
achieved rate (requests / seconds taken) is printed next to the offered one. A client that lags
seconds behind also reuses keep-alive connections the server closed as idle (uvicorn's 5 s
keep-alive), which httpx reports as ReadError: those are counted and printed, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.api.conftest import Server, run_server
from tests.service.conftest import BuiltRepository

LOAD_SECONDS = float(os.environ.get("SEQSERVE_OVERLOAD_SECONDS", "3"))
FACTOR = 4.0
MAX_REQUESTS = 10_000  # a bound on what the client sends, whatever the measured rate
SEQUENCES, STEPS = 64, 40


@pytest.fixture(scope="module")
def server(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("open-loop") / "repository"
    shutil.copytree(test_repository.path / "feat", root / "feat")
    with run_server(root, "--max-queue", "512", "--max-sequences-per-request", "64", log_dir=root.parent) as running:
        yield running


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def test_four_times_saturation_is_shed_with_503_and_the_server_recovers_at_once(server: Server) -> None:
    rng = np.random.default_rng(4)
    body = json.dumps({"inputs": rng.normal(size=(SEQUENCES, STEPS, 5)).round(4).tolist()}).encode()
    headers = {"content-type": "application/json"}
    path = "/v1/models/feat/predict"

    async def closed_loop(client: httpx.AsyncClient, workers: int, seconds: float) -> tuple[float, list[float]]:
        done: list[float] = []
        stop_at = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < stop_at:
                started = time.monotonic()
                response = await client.post(path, content=body, headers=headers)
                assert response.status_code == 200, response.text
                done.append(time.monotonic() - started)

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return len(done) / (time.monotonic() - began), done

    async def open_loop(client: httpx.AsyncClient, rate: float, seconds: float) -> list[tuple[int, float, str]]:
        count = min(int(rate * seconds), MAX_REQUESTS)
        results: list[tuple[int, float, str]] = []
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def one(scheduled: float) -> None:
            try:
                response = await client.post(path, content=body, headers=headers)
            except httpx.TransportError as exc:  # counted as a request without an answer
                results.append((0, loop.time() - scheduled, type(exc).__name__))
                return
            retry = response.headers.get("retry-after", "")
            if response.status_code == 503:
                error = response.json()["error"]
                retry = f"{retry}/{error['code']}"
            # Latency from the scheduled send: a client that falls behind is not hidden.
            results.append((response.status_code, loop.time() - scheduled, retry))

        tasks = []
        for i in range(count):
            scheduled = began + i / rate
            delay = scheduled - loop.time()
            await asyncio.sleep(max(delay, 0.0))  # yields even when behind schedule
            tasks.append(asyncio.ensure_future(one(scheduled)))
        await asyncio.gather(*tasks)
        return results

    async def scenario() -> dict[str, object]:
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            await closed_loop(client, 4, 0.5)  # warm connections and the model
            saturation, closed = await closed_loop(client, 8, 2.0)
            print(f"\nsaturation {saturation:.1f} req/s", flush=True)
            baseline = [await _timed(client, path, body, headers) for _ in range(20)]
            rss_before = peak_rss_mib(server.process.pid)
            rate = FACTOR * saturation
            began = time.monotonic()
            results = await asyncio.wait_for(open_loop(client, rate, LOAD_SECONDS), LOAD_SECONDS + 120)
            offered_seconds = time.monotonic() - began
            after = [await _timed(client, path, body, headers) for _ in range(20)]
        return {
            "saturation": saturation, "closed": closed, "baseline": baseline, "rate": rate, "results": results,
            "offered_seconds": offered_seconds, "after": after, "rss_before": rss_before,
        }

    figures = asyncio.run(scenario())
    results: list[tuple[int, float, str]] = figures["results"]  # type: ignore[assignment]
    statuses = [status for status, _, _ in results]
    accepted = [latency for status, latency, _ in results if status == 200]
    shed = [extra for status, _, extra in results if status == 503]
    after: list[float] = figures["after"]  # type: ignore[assignment]
    baseline: list[float] = figures["baseline"]  # type: ignore[assignment]
    rss_peak = peak_rss_mib(server.process.pid)

    print(
        f"\nopen loop: saturation {figures['saturation']:.1f} req/s ({SEQUENCES} seq x {STEPS} steps each), "
        f"offered {figures['rate']:.1f} req/s for {LOAD_SECONDS:.0f} s: {len(results)} requests in "
        f"{figures['offered_seconds']:.1f} s; 200: {statuses.count(200)}, 503: {statuses.count(503)}, "
        f"no answer (transport error): {statuses.count(0)} {sorted({e for st, _, e in results if st == 0})}; "
        f"achieved {len(results) / figures['offered_seconds']:.1f} req/s; accepted p50 "
        f"{percentile(accepted, 50) * 1000:.0f} ms, p99 {percentile(accepted, 99) * 1000:.0f} ms; "
        f"idle p50 before {percentile(baseline, 50) * 1000:.1f} ms, right after {percentile(after, 50) * 1000:.1f} ms; "
        f"peak RSS {figures['rss_before']:.0f} MiB before the load, {rss_peak:.0f} MiB after"
    )
    assert server.process.poll() is None, server.log()[-4000:]
    answered = [status for status in statuses if status != 0]
    assert answered and set(answered) <= {200, 503}, sorted(set(statuses))  # no 5xx but the shedding 503
    assert statuses.count(503) > 0, "4x the saturation rate was never shed"
    assert statuses.count(200) > 0
    assert set(shed) == {"1/overloaded"}, set(shed)  # Retry-After: 1 and the overloaded code on every 503
    assert "internal error" not in server.log()
    # Right after the load: served, not refused (the queue has drained; how fast is recorded above).
    assert len(after) == 20
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/readyz").status_code == 200


async def _timed(client: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str]) -> float:
    started = time.monotonic()
    response = await client.post(path, content=body, headers=headers)
    assert response.status_code == 200, response.text
    return time.monotonic() - started
