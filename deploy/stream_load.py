"""Streaming load for the local cluster: clients that send long sequences in chunks, as a real client does.

Each client runs streams one after another: a new stream id, then each chunk with the step it starts at
(`offset`). When a try fails in transport (the replica was killed, nginx gave up) or with a 5xx, the
client sends the same chunk again, with the same offset: the server answers it once, either applying it
(it was not) or from its cache (it was, and only the answer was lost). Every answer is checked against the
model's answer for the whole sequence so far (one `/predict` per prefix, asked once before the load).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
RETRIES = 20
RETRY_PAUSE_SECONDS = 0.25


@dataclass(frozen=True)
class StreamCase:
    steps: list[list[float]]
    sizes: list[int]
    expected: list[Any]  # the /predict output for the prefix that ends with each chunk


@dataclass(frozen=True)
class StreamWorkload:
    model: str
    cases: tuple[StreamCase, ...]


def make_stream_workload(
    repository: Path, model: str | None, port: int, *, streams: int = 16, seed: int = 11
) -> StreamWorkload:
    """Sequences of a stream-capable feature model (not per step), chunked at random, with the expected
    answer after each chunk from one replica's /predict on each prefix."""
    meta = None
    for path in sorted(repository.glob("*/*/model.json")):
        candidate = json.loads(path.read_text())
        streaming = candidate.get("streaming")
        if (
            streaming
            and not streaming.get("per_step")
            and candidate["task"] != "tagging"
            and candidate["input"]["kind"] == "features"
            and model in (None, candidate["name"])
        ):
            meta = candidate
            break
    if meta is None:
        raise ValueError(f"no stream-capable feature model {model or ''} in {repository}")
    rng = random.Random(seed)
    features, longest = meta["input"]["features"], min(meta["input"]["max_length"], 48)
    cases = []
    for _ in range(streams):
        length = rng.randint(12, longest)
        steps = [[round(rng.gauss(0, 1), 4) for _ in range(features)] for _ in range(length)]
        sizes: list[int] = []
        while sum(sizes) < length:
            sizes.append(min(rng.randint(1, 8), length - sum(sizes)))
        ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        status, answer = _post(port, f"/v1/models/{meta['name']}/predict", {"inputs": [steps[:e] for e in ends]})
        if status != 200:
            raise RuntimeError(f"reference request failed: {status} {answer!r}")
        cases.append(StreamCase(steps, sizes, answer["outputs"]))
    return StreamWorkload(meta["name"], tuple(cases))


def _post(port: int, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        text = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text[:300]


@dataclass
class StreamLoadResult:
    streams: int = 0
    streams_completed: int = 0
    chunks_sent: int = 0
    chunks_ok: int = 0
    chunks_failed: int = 0
    wrong_answers: int = 0
    tries_retried: int = 0
    replayed: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "streams_completed": self.streams_completed,
            "chunks_sent": self.chunks_sent,
            "chunks_ok": self.chunks_ok,
            "chunks_failed": self.chunks_failed,
            "wrong_answers": self.wrong_answers,
            "chunks_retried_by_the_client": self.tries_retried,
            "answered_from_the_stream_cache": self.replayed,
            "statuses": dict(self.statuses),
            "errors": self.errors[:5],
            "seconds": round(self.seconds, 2),
            "chunks_per_second": round(self.chunks_ok / self.seconds, 1) if self.seconds else 0.0,
        }


def same(got: Any, want: Any, atol: float = 1e-4) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same, got, want))
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, int | float) and abs(got - want) <= atol
    return bool(got == want)


def run_stream_load(
    port: int, workload: StreamWorkload, *, clients: int, max_seconds: float, stop: threading.Event | None = None
) -> StreamLoadResult:
    """`clients` threads, each running whole streams until `max_seconds` pass or `stop` is set (a stream
    under way is finished)."""
    result = StreamLoadResult()
    lock = threading.Lock()
    stop = stop or threading.Event()
    deadline = time.monotonic() + max_seconds

    def chunk(conn_box: list[http.client.HTTPConnection | None], path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """One chunk, retried like a client would: same body, same offset, a new connection after an error."""
        last: tuple[int, Any] = (0, "no try")
        for attempt in range(RETRIES):
            if attempt:
                with lock:
                    result.tries_retried += 1
                time.sleep(RETRY_PAUSE_SECONDS)
            try:
                if conn_box[0] is None:
                    conn_box[0] = http.client.HTTPConnection(HOST, port, timeout=60)
                conn_box[0].request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                response = conn_box[0].getresponse()
                text = response.read()
            except (OSError, http.client.HTTPException) as exc:
                if conn_box[0] is not None:
                    conn_box[0].close()
                conn_box[0] = None
                last = (0, repr(exc))
                continue
            last = (response.status, text)
            if response.status < 500:
                break
        status, text = last
        return status, (json.loads(text) if status == 200 else text)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn_box: list[http.client.HTTPConnection | None] = [None]
        while not stop.is_set() and time.monotonic() < deadline:
            case = workload.cases[rng.randrange(len(workload.cases))]
            path = f"/v1/models/{workload.model}/streams/{uuid.uuid4().hex}"
            with lock:
                result.streams += 1
            offset, complete = 0, True
            for i, size in enumerate(case.sizes):
                body = {
                    "steps": case.steps[offset : offset + size],
                    "start": i == 0,
                    "end": i == len(case.sizes) - 1,
                    "offset": offset,
                }
                status, answer = chunk(conn_box, path, body)
                with lock:
                    result.chunks_sent += 1
                    result.statuses[str(status)] += 1
                    if status != 200:
                        result.chunks_failed += 1
                        if len(result.errors) < 20:
                            result.errors.append(f"{status} {answer!r}"[:300])
                    elif not same(answer["output"], case.expected[i]):
                        result.wrong_answers += 1
                    else:
                        result.chunks_ok += 1
                        result.replayed += bool(answer.get("replayed"))
                if status != 200:
                    complete = False
                    break
                offset += size
            with lock:
                result.streams_completed += complete
        if conn_box[0] is not None:
            conn_box[0].close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), name=f"stream-{k}") for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max_seconds + RETRIES * 60)
    result.seconds = time.monotonic() - started
    return result


@contextlib.contextmanager
def background_stream_load(
    port: int, workload: StreamWorkload, *, clients: int, max_seconds: float
) -> Iterator[Callable[[], StreamLoadResult]]:
    stop = threading.Event()
    box: list[StreamLoadResult] = []
    thread = threading.Thread(
        target=lambda: box.append(run_stream_load(port, workload, clients=clients, max_seconds=max_seconds, stop=stop)),
        name="stream-load",
    )
    thread.start()

    def finish() -> StreamLoadResult:
        stop.set()
        thread.join(timeout=max_seconds + RETRIES * 60)
        return box[0]

    try:
        yield finish
    finally:
        stop.set()
        thread.join(timeout=max_seconds + RETRIES * 60)
