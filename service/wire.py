"""seqserve's HTTP/1.1 protocol: uvicorn's httptools protocol, with each answer in one write and bounded connections.

One write per answer. uvicorn writes a response's status line and headers, then
its body, as two socket writes. A replica killed between the two (`kill -9`, the
OOM killer, a node lost) leaves the load balancer with a 200 head and no body:
the head has already been passed on, so nginx cannot retry the request elsewhere
and the client sees a truncated answer. Held until the body, the head goes out
with it: a replica that dies first has sent nothing, and the load balancer
retries the request on another one. `CoalescingTransport` holds a written
response head (`HTTP/1.1 ...` up to its blank line) until the next write or
close, unless no body follows it: an interim `1xx`, a `204` or `304`, a
`Content-Length: 0`, and any answer to HEAD go out at once. uvicorn writes each
head in one call, so the head is always whole.

Bounded connections. A client must send a request's head within
`head_timeout_seconds` of its first byte and its body within
`body_timeout_seconds` of the head's end, else it gets 408 and the connection is
closed (slowloris: a few hundred connections trickling bytes would otherwise
hold the server's file descriptors for ever). A connection that never sends a
byte is closed after the keep-alive timeout, as an idle one is between requests.
Past `max_connections` open connections, a new one gets 503 with `Retry-After`
at once and is closed; open ones keep being served. One timer per connection on
the event loop, moved on lazily: no task, and no timer churn per request.
"""

from __future__ import annotations

import asyncio
import http
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

if TYPE_CHECKING:
    from starlette.responses import Response

log = logging.getLogger(__name__)

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"
_EMPTY_BODY = b"\r\ncontent-length: 0\r\n"  # uvicorn writes header names in lower case

DISCONNECTED = "seqserve.disconnected"
"""Scope key of a POST request's future that completes when its client's connection is lost: what the app waits
on beside its answer, without a task per request reading for `http.disconnect`."""

ANSWER = "seqserve.answer"
"""Scope key of a POST request's `WholeAnswer`: its answer written at once, past the ASGI `send`."""

REFUSED_LINGER_SECONDS = 1.0
"""How long a refused connection stays half-closed, its input read and dropped, so that the client reads the 503
rather than a reset."""


class CoalescingTransport:
    """A transport that writes a response head together with whatever is written next."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        if not self._head and _is_head_with_body(data):
            self._head = data
            return
        if self._head:
            data, self._head = self._head + data, b""
        self._transport.write(data)

    def write_whole(self, data: bytes) -> None:
        """Write a whole answer, head and body: never held, whatever its last bytes (a body may end in a blank line)."""
        self._flush()
        self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        if self._head:
            head, self._head = self._head, b""
            self._transport.write(head)

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


def _is_head_with_body(data: bytes) -> bool:
    # A final response's head that a body follows: not "HTTP/1.1 1xx" (100 Continue), 204 or 304, nor Content-Length 0.
    if not (data.startswith(_HEAD_START) and data.endswith(_HEAD_END)):
        return False
    status = data[9:12]
    return status[:1] != b"1" and status not in (b"204", b"304") and _EMPTY_BODY not in data


class WholeAnswer:
    """Writes a request's whole answer, its head and body built together and written in one call, doing what
    uvicorn's `send` does for a `http.response.start` and one final `http.response.body` (the profile showed the
    two ASGI messages, their header checks and the held head as a share of a small model's request).

    Called with the status, the headers (lower-case names, as Starlette's `raw_headers`) and the body, it returns
    False without writing anything when it cannot stand in for `send`: an answer already started, a status
    without a body (1xx, 204, 304), writing
    paused (`send` would wait for the client to read), an access log to write, a `connection` header, a
    `content-length` other than the body's, or a header `send` would refuse; the app then sends as usual."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle

    def __call__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        cycle = self._cycle
        if cycle.response_started or cycle.response_complete or cycle.flow.write_paused or cycle.access_log:
            return False
        if status < 200 or status in (204, 304):  # no body, and no content-length
            return False
        if cycle.disconnected:
            return True  # as `send`: an answer to a client that left is dropped
        parts = [STATUS_LINE[status]]
        length = b"%d" % len(body)
        has_length = False
        for name, value in (*cycle.default_headers, *headers):
            if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value) or name == b"connection":
                return False
            if name == b"content-length":
                if value != length:
                    return False
                has_length = True
            parts += (name, b": ", value, b"\r\n")
        if not has_length:
            parts += (b"content-length: ", length, b"\r\n")
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        transport = cycle.transport
        if isinstance(transport, CoalescingTransport):
            transport.write_whole(b"".join(parts))
        else:
            transport.write(b"".join(parts))
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()
        return True


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection may take (see `Settings` for each)."""

    head_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    max_connections: int = 2048


class ConnectionReport:
    """Connections closed for a timeout or refused over the limit, logged as one summary at most every
    `every_seconds` (a slowloris attack would otherwise write a line per connection)."""

    def __init__(self, every_seconds: float = 10.0) -> None:
        self._every = every_seconds
        self._counts: Counter[str] = Counter()
        self._logged_at = -math.inf
        self._pending: asyncio.TimerHandle | None = None

    def count(self, reason: str, loop: asyncio.AbstractEventLoop) -> None:
        self._counts[reason] += 1
        if self._pending is None:
            self._pending = loop.call_at(max(loop.time(), self._logged_at + self._every), self._log, loop)

    def _log(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pending = None
        log.warning("connections closed: %s", ", ".join(f"{n} {r}" for r, n in sorted(self._counts.items())))
        self._counts.clear()
        self._logged_at = loop.time()


Part = Literal["head", "body"]


class Direct(Protocol):
    """Answers requests inside the protocol, past ASGI (`service.api.direct.DirectInference`)."""

    def take(self, scope: Any, *, forward_only: bool = False) -> Any | None:
        """What it needs to answer this request, its head read; None when it leaves the request to ASGI.
        `forward_only`: only a request it forwards elsewhere (the access log is on: the rest goes through ASGI)."""

    def start(
        self, call: Any, body: bytes, gone: asyncio.Future[None] | None, write: Callable[[Response], None]
    ) -> bool:
        """Answer `call` (its whole `body` in) through `write`; False, nothing done, to leave it to ASGI."""

    def abandoned(self, call: Any) -> None:
        """`call`'s client left before its whole body came."""


class DirectWriter:
    """Writes a direct request's answer: whole when `WholeAnswer` can, else sent through ASGI by a task of its own
    (writing paused: the ASGI `send` waits for the client to read)."""

    __slots__ = ("_cycle", "_protocol")

    def __init__(self, protocol: HttpProtocol, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        self._cycle = cycle

    def __call__(self, response: Response) -> None:
        body = response.body
        if isinstance(body, bytes) and WholeAnswer(self._cycle)(response.status_code, response.raw_headers, body):
            return

        async def send_answer(scope: Any, receive: Any, send: Any) -> None:
            await response(scope, receive, send)

        self._protocol.run_asgi(self._cycle, send_answer)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport`, with read timeouts and a connection limit."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    report: ClassVar[ConnectionReport] = ConnectionReport()
    direct: ClassVar[Direct | None] = None
    draining: ClassVar[bool] = False
    """Set by `begin_drain`: every answer from then on closes its connection."""

    @classmethod
    def begin_drain(cls, connections: Iterable[object]) -> None:
        """The server has begun to drain: each answer still to be written, and every later one, says
        `connection: close` and closes its connection. A keep-alive client then sends its next request on a new
        connection (answered 503 `draining` while the server listens, refused once it has stopped), never on one
        that the server closes as the request arrives, which the client would read as a reset."""
        cls.draining = True
        for connection in connections:
            cycle = getattr(connection, "cycle", None) if isinstance(connection, cls) else None
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._socket: asyncio.Transport | None = None  # the real transport, under the coalescing one
        self._reading: Part | None = None  # what the client owes us, when it owes something
        self._head_begun = False  # a request line has started (not just stray CRLFs)
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._gone: list[tuple[Any, asyncio.Future[None]]] = []  # (cycle, its `DISCONNECTED`) of unanswered POSTs
        self._direct_body: tuple[RequestResponseCycle, Any, Any] | None = None  # (cycle, call, app) reading its body

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refuse(transport)
            return
        self._socket = transport
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]
        # NOTE: uvicorn arms the keep-alive timeout only after an answer; a connection that never sends is idle too.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._reading = None
        waiting, self._direct_body = self._direct_body, None
        if waiting is not None and self.direct is not None and not waiting[0].response_complete:
            self.direct.abandoned(waiting[1])  # its client left (or timed out) before the whole body came
        for _, gone in self._gone:
            if not gone.done():
                gone.set_result(None)
        self._gone = []
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the client closes or the linger ends
        if self._reading is None:
            self._expect("head")
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        if self._reading is None:  # a pipelined request, after another in the same read
            self._expect("head")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._head_begun = False
        self._expect("body")  # the parser ends the message at once when there is none
        cycle = self.cycle
        if self.draining and cycle is not None:
            cycle.keep_alive = False
        if self.scope["method"] == "POST" and cycle is not None:
            gone = self.scope[DISCONNECTED] = self.loop.create_future()  # type: ignore[literal-required]
            self.scope[ANSWER] = WholeAnswer(cycle)  # type: ignore[literal-required]
            self._gone = [(c, g) for c, g in self._gone if not c.response_complete]  # earlier ones, still pipelined
            self._gone.append((cycle, gone))
        if self.scope["method"] == "HEAD" and cycle is not None and cycle.scope is self.scope:
            # NOTE: uvicorn writes no body after a HEAD answer's head: nothing to hold the head for.
            assert self._socket is not None
            cycle.transport = self._socket

    def on_body(self, body: bytes) -> None:
        waiting = self._direct_body
        if waiting is not None and waiting[0] is self.cycle:
            # NOTE: not paused as for an app reading it: the direct path takes only bodies within max_body_bytes.
            waiting[0].body += body
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading = None
        if self._gone:
            # NOTE: uvicorn pauses reading while a body outgrows its buffer and resumes it only when the app
            # reads: after the last chunk it may stay paused, and a client that leaves would go unnoticed.
            # Nothing but a pipelined request (whose head pauses reading again) or the end can follow.
            self.flow.resume_reading()
        waiting = self._direct_body
        if waiting is not None and waiting[0] is self.cycle:
            self._direct_body = None
            self._start_direct(*waiting)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Start answering a request whose head is in (at once, or after the answers before it when pipelined):
        on the direct path when it takes the request, else as an ASGI task."""
        direct = self.direct
        if direct is not None and app is self.app:
            # NOTE: with the access log on, or a client waiting for `100 Continue` (ASGI sends it when the app first
            # reads, so a refusal costs no body), only what the direct path forwards elsewhere is taken
            call = direct.take(cycle.scope, forward_only=cycle.access_log or cycle.waiting_for_100_continue)
            if call is not None:
                if cycle.waiting_for_100_continue and not self.transport.is_closing():
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    cycle.waiting_for_100_continue = False
                if cycle.more_body:
                    self._direct_body = (cycle, call, app)  # started when its body is in
                else:
                    self._start_direct(cycle, call, app)
                return
        super()._start_asgi_task(cycle, app)

    def run_asgi(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Answer `cycle` by `app` as an ASGI task."""
        super()._start_asgi_task(cycle, app)

    def _start_direct(self, cycle: RequestResponseCycle, call: Any, app: Any) -> None:
        assert self.direct is not None
        if cycle.disconnected or cycle.response_complete:
            return  # the client left, or its body timed out (answered 408)
        gone: asyncio.Future[None] | None = cycle.scope.get(DISCONNECTED)  # type: ignore[assignment]
        if not self.direct.start(call, bytes(cycle.body), gone, DirectWriter(self, cycle)):
            super()._start_asgi_task(cycle, app)  # its body is still in `cycle.body`, for the app to receive

    def handle_websocket_upgrade(self) -> None:
        self._reading = None  # the connection is the WebSocket protocol's from here
        super().handle_websocket_upgrade()

    def _expect(self, part: Part) -> None:
        """Start the clock on `part`; the connection's one timer is moved only when it would fire too late."""
        seconds = self.limits.head_timeout_seconds if part == "head" else self.limits.body_timeout_seconds
        self._reading = part
        self._deadline = self.loop.time() + seconds
        if self._timer is not None and self._timer.when() > self._deadline:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._on_timer, self._deadline)

    def _on_timer(self, armed_for: float) -> None:
        self._timer = None
        part = self._reading
        if part is None or self.transport.is_closing():
            return
        if self._deadline > armed_for:  # the clock was restarted since: wait for the new deadline
            self._timer = self.loop.call_at(self._deadline, self._on_timer, self._deadline)
        elif self._waiting_for_server():
            self._expect(part)  # the client's clock runs again once the server reads
        else:
            self._time_out(part)

    def _waiting_for_server(self) -> bool:
        """The client may be waiting for us: reading is paused (a body the app has not taken yet, a pipelined
        request), the app has not asked for a body sent after `100 Continue`, or an answer is under way."""
        cycle = self.cycle
        if self.flow.read_paused:
            return True
        if self._reading == "body":
            return cycle is not None and cycle.waiting_for_100_continue
        return cycle is not None and not cycle.response_complete

    def _time_out(self, part: Part) -> None:
        self._reading = None
        cycle = self.cycle
        if part == "body" and cycle is not None and cycle.response_started:
            # Answered before the whole body came: the connection cannot carry another request.
            if cycle.response_complete:
                self.transport.close()
            else:
                cycle.keep_alive = False
            return
        if part == "head" and not self._head_begun:  # nothing but stray bytes since the last answer
            self.transport.close()
            return
        if part == "body" and cycle is not None:
            cycle.disconnected = True  # the app reads a disconnect; whatever it answers is dropped
            cycle.message_event.set()
        seconds = self.limits.head_timeout_seconds if part == "head" else self.limits.body_timeout_seconds
        v2 = part == "body" and self.scope["path"].startswith("/v2/")
        message = f"request {part} not received within {seconds:g} s"
        self.transport.write(self._answer(408, "request_timeout", message, v2=v2))
        self.transport.close()
        self.report.count(f"{part} timeout ({seconds:g} s)", self.loop)

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Answer 503 before reading anything, half-close, drop what the client sends, close after the linger."""
        self._refused = True
        self.transport = transport
        limit = self.limits.max_connections
        message = f"too many open connections (limit {limit}); retry later or on another replica"
        transport.write(self._answer(503, "overloaded", message, retry_after_seconds=1))
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self.loop.call_later(REFUSED_LINGER_SECONDS, transport.close)
        self.report.count(f"refused over the limit ({limit})", self.loop)

    def _answer(
        self, status: int, code: str, message: str, *, v2: bool = False, retry_after_seconds: int | None = None
    ) -> bytes:
        """A whole JSON error answer in seqserve's error shape (the /v2 one when `v2`), closing the connection."""
        body = orjson.dumps({"error": message, "code": code} if v2 else {"error": {"code": code, "message": message}})
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        if retry_after_seconds is not None:
            headers.append((b"retry-after", str(retry_after_seconds).encode()))
        phrase = http.HTTPStatus(status).phrase
        lines = [f"HTTP/1.1 {status} {phrase}\r\n".encode()]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        return b"".join([*lines, b"\r\n", body])


def http_protocol(limits: ConnectionLimits, direct: Direct | None = None) -> type[HttpProtocol]:
    """The protocol class for uvicorn's `http`, bound to `limits`, with a report of its own; answering the requests
    `direct` takes itself."""
    return type("HttpProtocol", (HttpProtocol,), {"limits": limits, "report": ConnectionReport(), "direct": direct})
