"""Overload, open loop: measure the saturation rate with a closed loop, then offer 4x that rate on a
fixed schedule whatever the answers. The server sheds with 503 + Retry-After, every request gets one
answer, the process lives with bounded memory, and once the load stops requests are served at once.

CI offers the load for 3 s (`SEQSERVE_OVERLOAD_SECONDS`, e.g. 30 for the recorded run:
`SEQSERVE_OVERLOAD_SECONDS=30 pytest tests/service/api/test_open_loop.py -s`). Latencies are
recorded, not asserted: the figures print at the end (`-s`).

The client is the benchmark's (`bench.client`): raw HTTP/1.1 on keep-alive connections with the
request bytes encoded once, so that on the server's own 2 cores it keeps the 4x schedule (its lag
behind the schedule is measured and printed). Accepted latency is given both from the scheduled
start and from the moment the request was written.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.client import Connection, encode_requests
from tests.service.api.conftest import Server, run_server
from tests.service.conftest import BuiltRepository

LOAD_SECONDS = float(os.environ.get("SEQSERVE_OVERLOAD_SECONDS", "3"))
FACTOR = 4.0
MAX_REQUESTS = 25_000  # a bound on what the client sends, whatever the measured rate
SEQUENCES, STEPS = 64, 40


@pytest.fixture(scope="module")
def server(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("open-loop") / "repository"
    shutil.copytree(test_repository.path / "feat", root / "feat")
    # NOTE: one HTTP process: the closed loop keeps 512 sequences in flight, what a queue of 512 holds; the
    # saturation rate and the shedding measured are one event loop's
    flags = ("--max-queue", "512", "--max-sequences-per-request", "64", "--http-workers", "1")
    with run_server(root, *flags, log_dir=root.parent) as running:
        yield running


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass(frozen=True)
class Answer:
    status: int  # 0: the connection failed before an answer
    from_schedule: float  # seconds from the scheduled start to the whole answer
    from_send: float  # seconds from writing the request to the whole answer
    lag: float  # seconds the client wrote the request after its scheduled start
    shed: str  # "<Retry-After>/<error code>" of a 503, else ""


async def closed_loop(port: int, raw: bytes, workers: int, seconds: float) -> tuple[float, list[float]]:
    done: list[float] = []
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        connection = await Connection.open(port)
        try:
            while time.monotonic() < stop_at:
                started = time.monotonic()
                status, body = await connection.request(raw)
                assert status == 200, body[:300]
                done.append(time.monotonic() - started)
        finally:
            connection.close()

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return len(done) / (time.monotonic() - began), done


async def open_loop(port: int, raw: bytes, rate: float, seconds: float) -> list[Answer]:
    """`rate` requests per second on a fixed schedule, each on an idle connection (a new one when
    none is idle): a slow answer never delays the next start."""
    count = min(int(rate * seconds), MAX_REQUESTS)
    loop = asyncio.get_running_loop()
    idle: list[Connection] = [await Connection.open(port) for _ in range(64)]
    answers: list[Answer] = []
    began = loop.time() + 0.05

    async def one(scheduled: float) -> None:
        sent = loop.time()
        while idle and idle[-1].stale():  # the server may be closing it (keep-alive timeout)
            idle.pop().close()
        connection = idle.pop() if idle else await Connection.open(port)
        try:
            status, head, body = await connection.exchange(raw)
        except (OSError, asyncio.IncompleteReadError) as exc:
            connection.close()
            answers.append(Answer(0, loop.time() - scheduled, loop.time() - sent, sent - scheduled, repr(exc)))
            return
        idle.append(connection)
        done = loop.time()
        shed = ""
        if status == 503:
            retry = next(
                (line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.startswith(b"retry-after:")),
                b"",
            )
            shed = f"{retry.decode()}/{json.loads(body)['error']['code']}"
        answers.append(Answer(status, done - scheduled, done - sent, sent - scheduled, shed))

    tasks = []
    for i in range(count):
        scheduled = began + i / rate
        delay = scheduled - loop.time()
        await asyncio.sleep(max(delay, 0.0))  # yields even when behind schedule
        tasks.append(asyncio.ensure_future(one(scheduled)))
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    return answers


def test_four_times_saturation_is_shed_with_503_and_the_server_recovers_at_once(server: Server) -> None:
    rng = np.random.default_rng(4)
    body = json.dumps({"inputs": rng.normal(size=(SEQUENCES, STEPS, 5)).round(4).tolist()}).encode()
    port = int(server.url.rsplit(":", 1)[1])
    [raw] = encode_requests("/v1/models/feat/predict", [body], port)

    async def idle_latencies(count: int) -> list[float]:
        connection = await Connection.open(port)
        try:
            out = []
            for _ in range(count):
                started = time.monotonic()
                status, answer = await connection.request(raw)
                assert status == 200, answer[:300]
                out.append(time.monotonic() - started)
            return out
        finally:
            connection.close()

    async def scenario() -> dict[str, object]:
        await closed_loop(port, raw, 4, 0.5)  # warm the model
        saturation, closed = await closed_loop(port, raw, 8, 2.0)
        print(f"\nsaturation {saturation:.1f} req/s", flush=True)
        baseline = await idle_latencies(20)
        rss_before = peak_rss_mib(server.process.pid)
        rate = FACTOR * saturation
        began = time.monotonic()
        results = await asyncio.wait_for(open_loop(port, raw, rate, LOAD_SECONDS), LOAD_SECONDS + 120)
        offered_seconds = time.monotonic() - began
        after = await idle_latencies(20)
        return {
            "saturation": saturation,
            "closed": closed,
            "baseline": baseline,
            "rate": rate,
            "results": results,
            "offered_seconds": offered_seconds,
            "after": after,
            "rss_before": rss_before,
        }

    figures = asyncio.run(scenario())
    results: list[Answer] = figures["results"]  # type: ignore[assignment]
    statuses = [a.status for a in results]
    accepted = [a for a in results if a.status == 200]
    shed = [a.shed for a in results if a.status == 503]
    failed = [a.shed for a in results if a.status == 0]
    after: list[float] = figures["after"]  # type: ignore[assignment]
    baseline: list[float] = figures["baseline"]  # type: ignore[assignment]
    rss_peak = peak_rss_mib(server.process.pid)
    ms = 1000.0
    lag = [a.lag for a in results]
    from_schedule = [a.from_schedule for a in accepted]
    from_send = [a.from_send for a in accepted]
    print(
        f"\nopen loop: saturation {figures['saturation']:.1f} req/s ({SEQUENCES} seq x {STEPS} steps each), "
        f"offered {figures['rate']:.1f} req/s for {LOAD_SECONDS:.0f} s: {len(results)} requests in "
        f"{figures['offered_seconds']:.1f} s; client lag behind the schedule p50 "
        f"{percentile(lag, 50) * ms:.1f} ms, p99 {percentile(lag, 99) * ms:.1f} ms; "
        f"200: {statuses.count(200)}, 503: {statuses.count(503)}, no answer: {len(failed)} {sorted(set(failed))}; "
        f"accepted p50/p99 from the schedule {percentile(from_schedule, 50) * ms:.0f}/"
        f"{percentile(from_schedule, 99) * ms:.0f} ms, from the send "
        f"{percentile(from_send, 50) * ms:.0f}/{percentile(from_send, 99) * ms:.0f} ms; "
        f"503 p99 {percentile([a.from_send for a in results if a.status == 503], 99) * ms:.1f} ms; "
        f"idle p50 before {percentile(baseline, 50) * ms:.1f} ms, right after {percentile(after, 50) * ms:.1f} ms; "
        f"peak RSS {figures['rss_before']:.0f} MiB before the load, {rss_peak:.0f} MiB after"
    )
    assert server.process.poll() is None, server.log()[-4000:]
    assert not failed, f"{len(failed)} requests got no answer: {sorted(set(failed))}"
    assert set(statuses) <= {200, 503}, sorted(set(statuses))  # no 5xx but the shedding 503
    assert statuses.count(503) > 0, "4x the saturation rate was never shed"
    assert statuses.count(200) > 0
    assert set(shed) == {"1/overloaded"}, set(shed)  # Retry-After: 1 and the overloaded code on every 503
    assert "internal error" not in server.log()
    # Right after the load: served, not refused (the queue has drained; how fast is recorded above).
    assert len(after) == 20
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/readyz").status_code == 200
