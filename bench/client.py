"""The load generator: asyncio over raw HTTP/1.1 keep-alive connections.

Requests are encoded once, up front, so that per request the client only
writes bytes and reads one response: its own CPU stays small and is reported
(`LoadResult.client_cpu_share`). Closed loop: `concurrency` connections, each
sending its next request when the last one is answered. Open loop: requests
start at fixed times (`rate` per second) whether or not earlier ones are done;
latency counts from the scheduled start, so a slow server cannot hide queueing.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def encode_requests(
    path: str, bodies: Sequence[bytes | tuple[bytes, int]], port: int, content_type: str = "application/json"
) -> list[bytes]:
    """Whole HTTP/1.1 requests; a `(body, header_length)` pair uses the V2 binary extension."""
    out = []
    for item in bodies:
        if isinstance(item, bytes):
            body, extra = item, ""
        else:
            body, extra = item[0], f"Inference-Header-Content-Length: {item[1]}\r\n"
        kind = content_type if not extra else "application/octet-stream"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {kind}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


# NOTE: below the server's keep-alive timeout (seqserve's `keep_alive_seconds`, 5 s by
# default): a connection idle longer may be closed by the server just as a request is
# written on it, and that request is lost. Clients, like nginx, drop such connections.
MAX_IDLE_SECONDS = 4.0


class _Answers(asyncio.Protocol):
    """The client side of one keep-alive connection: splits what arrives into answers (head, body) by their
    Content-Length, each resolving the future of the request waiting for it. No stream reader: per answer,
    one `find` for the head's end and one slice."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiting: asyncio.Future[tuple[bytes, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_exception(asyncio.IncompleteReadError(bytes(self._buffer), None))

    def eof_received(self) -> bool:
        self.closed = True
        return False

    def expect(self) -> asyncio.Future[tuple[bytes, bytes]]:
        self._waiting = asyncio.get_running_loop().create_future()
        if self.closed:
            self._waiting.set_exception(asyncio.IncompleteReadError(b"", None))
        return self._waiting

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiting is None:
            return
        head = bytes(buffer[: end + 4]).lower()
        at = head.find(b"content-length:")
        if at < 0:
            self._waiting.set_exception(RuntimeError("response without Content-Length"))
            return
        length = int(head[at + 15 : head.find(b"\r\n", at)])
        if len(buffer) < end + 4 + length:
            return
        body = bytes(buffer[end + 4 : end + 4 + length])
        del buffer[: end + 4 + length]
        waiting, self._waiting = self._waiting, None
        waiting.set_result((head, body))


class Connection:
    def __init__(self, transport: asyncio.Transport, answers: _Answers) -> None:
        self._transport, self._answers = transport, answers
        self.last_used = time.monotonic()

    def stale(self) -> bool:
        """Closed by the server, or idle so long it may be closing now (see MAX_IDLE_SECONDS):
        a pool drops it rather than reuse it, as HTTP clients' pools do."""
        idle = time.monotonic() - self.last_used > MAX_IDLE_SECONDS
        return idle or self._answers.closed or self._transport.is_closing()

    @classmethod
    async def open(cls, port: int) -> Connection:
        transport, answers = await asyncio.get_running_loop().create_connection(_Answers, "127.0.0.1", port)
        return cls(transport, answers)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        status, _, body = await self.exchange(raw)
        return status, body

    async def exchange(self, raw: bytes) -> tuple[int, bytes, bytes]:
        """Send one whole request; its status, head (lower case) and body."""
        answer = self._answers.expect()
        self._transport.write(raw)
        head, body = await answer
        self.last_used = time.monotonic()
        return int(head[9:12]), head, body

    def close(self) -> None:
        self._transport.close()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop: the load generator's own CPU per request is what the server does not get."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


@dataclass
class LoadResult:
    mode: str  # "closed" or "open"
    level: float  # concurrency, or offered requests per second
    seconds: float  # measured window
    sequences: int  # answered with 200 inside the window
    errors: int
    latencies_ms: np.ndarray = field(repr=False)
    client_cpu_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.sequences / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    @property
    def client_cpu_share(self) -> float:
        """The client's CPU time as a share of the machine's (all cores) over the window."""
        import os

        return self.client_cpu_seconds / (self.seconds * (os.cpu_count() or 1)) if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "mode": self.mode,  # type: ignore[dict-item]
            "level": self.level,
            "seconds": round(self.seconds, 3),
            "sequences": self.sequences,
            "errors": self.errors,
            "throughput_seq_s": round(self.throughput, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p90_ms": round(self.percentile(90), 2),
            "p99_ms": round(self.percentile(99), 2),
            "mean_ms": round(float(np.mean(self.latencies_ms)), 2) if len(self.latencies_ms) else float("nan"),
            "client_cpu_share": round(self.client_cpu_share, 4),
            **self.extra,
        }


Window = Callable[[], None]
Answer = Callable[[float, float, int], None]
"""Called per request of an open loop: (scheduled start, end, HTTP status) in loop.time()
seconds; status 0 when the connection failed, -1 when it was not sent (connection cap reached)."""


Send = Callable[[bytes], Awaitable[bool]]
"""Sends one encoded request and waits for its answer: True when it succeeded."""


async def closed_loop(
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    seconds: float,
    warmup_seconds: float,
    on_window: tuple[Window, Window] | None = None,
) -> LoadResult:
    """`concurrency` connections in a closed loop; only answers inside the window after warm-up count."""
    connections = [await Connection.open(port) for _ in range(concurrency)]

    def sender(conn: Connection) -> Send:
        async def send(raw: bytes) -> bool:
            status, _ = await conn.request(raw)
            return status == 200

        return send

    try:
        return await run_closed_loop([sender(c) for c in connections], requests, seconds, warmup_seconds, on_window)
    finally:
        for conn in connections:
            conn.close()


async def run_closed_loop(
    senders: Sequence[Send],
    requests: Sequence[bytes],
    seconds: float,
    warmup_seconds: float,
    on_window: tuple[Window, Window] | None = None,
) -> LoadResult:
    """One closed-loop worker per sender, each sending the next request as soon as its last is
    answered; only answers inside the window after warm-up count. The protocol is the senders'."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start, stop = start + warmup_seconds, start + warmup_seconds + seconds
    next_index = itertools.count(int(start * 1000) % len(requests))
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}

    async def worker(send: Send) -> None:
        while True:
            sent = loop.time()
            if sent >= stop:
                return
            ok = await send(requests[next(next_index) % len(requests)])
            done = loop.time()
            if window_start <= sent and done <= stop:
                if ok:
                    counts["ok"] += 1
                    latencies.append(done - sent)
                else:
                    counts["errors"] += 1

    measure = _Meter(loop, window_start, stop, on_window)
    await asyncio.gather(measure.run(), *(worker(send) for send in senders))
    return LoadResult(
        "closed",
        len(senders),
        stop - window_start,
        counts["ok"],
        counts["errors"],
        np.asarray(latencies) * 1000.0,
        measure.cpu_seconds,
    )


async def open_loop(
    port: int,
    requests: Sequence[bytes],
    rate: float,
    seconds: float,
    warmup_seconds: float,
    max_connections: int = 512,
    on_window: tuple[Window, Window] | None = None,
    on_answer: Answer | None = None,
) -> LoadResult:
    """Requests start every 1/rate seconds on an idle connection (opened on demand, at most
    `max_connections`); past that cap a start is counted as an error rather than delayed. A
    connection that fails counts its request as an error and is dropped."""
    loop = asyncio.get_running_loop()
    idle: list[Connection] = [await Connection.open(port) for _ in range(min(64, max_connections))]
    opened = len(idle)
    start = loop.time() + 0.05
    window_start, stop = start + warmup_seconds, start + warmup_seconds + seconds
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    tasks: set[asyncio.Task[None]] = set()

    async def one(conn: Connection | None, scheduled: float, raw: bytes) -> None:
        nonlocal opened
        try:
            if conn is None:
                conn = await Connection.open(port)
            status, _ = await conn.request(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError, RuntimeError):
            status = 0
            opened -= 1
            if conn is not None:
                conn.close()
        else:
            idle.append(conn)
        done = loop.time()
        if on_answer is not None:
            on_answer(scheduled, done, status)
        if window_start <= scheduled and done <= stop:
            if status == 200:
                counts["ok"] += 1
                latencies.append(done - scheduled)
            else:
                counts["errors"] += 1

    async def generate() -> None:
        nonlocal opened
        interval = 1.0 / rate
        for k in itertools.count():
            scheduled = start + k * interval
            if scheduled >= stop:
                return
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            while idle and idle[-1].stale():
                idle.pop().close()
                opened -= 1
            if idle:
                conn: Connection | None = idle.pop()
            elif opened < max_connections:
                conn, opened = None, opened + 1
            else:
                if window_start <= scheduled:
                    counts["errors"] += 1
                if on_answer is not None:
                    on_answer(scheduled, scheduled, -1)
                continue
            task = loop.create_task(one(conn, scheduled, requests[k % len(requests)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    measure = _Meter(loop, window_start, stop, on_window)
    try:
        await asyncio.gather(measure.run(), generate())
        # Answers still outstanding at the end of the window count as late: wait a little, then cancel.
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        for task in list(tasks):
            task.cancel()
    finally:
        for conn in idle:
            conn.close()
    late = len(tasks)
    return LoadResult(
        "open",
        rate,
        stop - window_start,
        counts["ok"],
        counts["errors"] + late,
        np.asarray(latencies) * 1000.0,
        measure.cpu_seconds,
    )


class _Meter:
    """Reads this process's CPU time at the window's edges and calls the server-side probes."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, start: float, stop: float, on_window: tuple[Window, Window] | None
    ) -> None:
        self._loop, self._start, self._stop, self._on = loop, start, stop, on_window
        self.cpu_seconds = 0.0

    async def run(self) -> None:
        await asyncio.sleep(max(0.0, self._start - self._loop.time()))
        cpu = time.process_time()
        if self._on:
            self._on[0]()
        await asyncio.sleep(max(0.0, self._stop - self._loop.time()))
        self.cpu_seconds = time.process_time() - cpu
        if self._on:
            self._on[1]()
