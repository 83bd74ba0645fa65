"""Inference requests answered inside seqserve's HTTP protocol, with no ASGI between them and the batcher.

On a small model most of a request's CPU is the server's own: profiled on the
`names` demo, the ASGI layers (the request's task, its coroutines, the scope,
Starlette's `Request` and `Headers`, the `receive` messages of its body) took a
sizeable share of the event loop per request. For the requests that make up the
load, the protocol (`service.wire`) hands the whole request here instead: once
its body is in, `DirectInference.start` checks the key, resolves the model,
validates the body and queues its sequences, all at once; a callback on the
batcher's future formats the answer and writes it whole. No task, no coroutine.

With several HTTP processes and stream state kept in the processes (no
`state_url`), the first process holds every stream: in the others, the direct
path forwards each stream request (the `/v1` stream routes, and V2 infer bodies
naming a `sequence_id`) over a Unix socket to the first, and writes its answer
back as it came.

It answers exactly as `inference.serve` does (the same checks in the same order,
the same errors, the same metrics): the same functions do the work. What it
does not take goes through ASGI as before (`InferenceFastPath`, then FastAPI):
a stream's chunk it does not forward, a body without `Content-Length` or over
`max_body_bytes` (413 from there), any route but the inference ones, and, but
for what it forwards, `Expect: 100-continue` and every request while the access
log is on.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Scope

from service.api.auth import check_credentials
from service.api.body import BINARY_HEADER, check_content_type, split_body
from service.api.errors import error_answer
from service.api.inference import Prepared
from service.api.routes import INFERENCE_ROUTES, STREAM, Operation, path_pattern
from service.api.state import AppState
from service.batching.pending import PendingRequest
from service.errors import Abandoned, Draining, StateUnavailable, Unauthorized
from service.registry import ModelVersion

Write = Callable[[Response], None]
"""Writes a request's answer (the protocol's: whole when it can, else through ASGI)."""

_BINARY_HEADER = BINARY_HEADER.encode()
_STREAM_PATHS = tuple(path_pattern(route.path) for route in INFERENCE_ROUTES if route.operation is STREAM)
_NOT_FORWARDED = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade"}
    | {b"expect", b"content-length", b"date", b"server"}
)
"""Headers a forwarded request or answer does not carry over: hop-by-hop ones, and those written anew."""
_ROUTES: tuple[tuple[re.Pattern[str], Operation], ...] = tuple(
    (path_pattern(route.path), route.operation) for route in INFERENCE_ROUTES if route.operation.prepare is not None
)


class Call:
    """One request taken by the direct path: what its route and headers say."""

    __slots__ = (
        "api_key", "authorization", "binary_length", "content_type", "forward", "forward_only", "name", "operation",
        "scope", "started", "version",
    )  # fmt: skip

    def __init__(self, operation: Operation, name: str | None, version: str | None, scope: Scope) -> None:
        self.operation = operation
        self.name = name
        self.version = version
        self.scope = scope
        self.started = time.perf_counter()  # its head read: where the ASGI path starts its clock too
        self.forward = False  # a stream request, for the process that holds the streams
        self.forward_only = False  # taken only to be forwarded if it is a stream's chunk
        self.content_type: str | None = None
        self.binary_length: str | None = None
        self.api_key: str | None = None
        self.authorization: str | None = None


class DirectInference:
    """The inference routes' answers, for seqserve's protocol (see the module's docstring)."""

    def __init__(self, state: AppState, *, forward_streams_to: str | None = None) -> None:
        self._state = state
        self._limit = state.settings.max_body_bytes
        self._timeout = state.settings.request_timeout_seconds
        self._forward_to = forward_streams_to
        self._forwarding: set[asyncio.Task[None]] = set()

    def take(self, scope: Scope, *, forward_only: bool = False) -> Call | None:
        """The call when the direct path answers this request (its head read), else None; `forward_only`: only a
        stream request it forwards (the access log is on)."""
        method, path = scope["method"], scope["path"]
        forwarding = self._forward_to is not None and method in ("POST", "GET", "HEAD", "DELETE")
        if forwarding and any(pattern.fullmatch(path) for pattern in _STREAM_PATHS):
            call = Call(STREAM, None, None, scope)
            call.forward = True
            return call if _forwardable(scope, self._limit, has_body=method == "POST") else None
        if method != "POST":
            return None
        for pattern, operation in _ROUTES:
            match = pattern.fullmatch(path)
            if match is not None:
                params = match.groupdict()
                call = Call(operation, params.get("name"), params.get("version"), scope)
                break
        else:
            return None
        length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if length is not None:
                    return None  # repeated: left to the parser and ASGI
                length = value
            elif name == b"content-type":
                call.content_type = value.decode("latin-1")
            elif name == b"transfer-encoding":
                return None
            elif name == b"x-api-key":
                call.api_key = value.decode("latin-1")
            elif name == b"authorization":
                call.authorization = value.decode("latin-1")
            elif name == _BINARY_HEADER:
                call.binary_length = value.decode("latin-1")
        if length is None or not length.isdigit() or int(length) > self._limit:
            return None  # the ASGI path reads it, or answers 413
        if forward_only:
            if self._forward_to is None or not call.operation.v2:
                return None
            call.forward_only = True  # a V2 stream chunk is forwarded; anything else goes through ASGI
        return call

    def start(self, call: Call, body: bytes, gone: asyncio.Future[None] | None, write: Write) -> bool:
        """Answer `call`, whose whole `body` is in: at once for an error, else when the batcher answers. `gone`
        completes when the client leaves. False, with nothing done, when the request needs the ASGI path."""
        operation = call.operation
        v2 = operation.v2
        if call.forward or (self._forward_to is not None and v2 and b"sequence_id" in body):
            task = asyncio.get_running_loop().create_task(self._forward(call, body, write))
            self._forwarding.add(task)
            task.add_done_callback(self._forwarding.discard)
            return True
        if call.forward_only:
            return False
        try:
            self._check_key(call)
        except Unauthorized as exc:
            write(error_answer(exc, v2=v2))
            return True
        started = call.started
        labels = ("", "")
        try:
            model = self._serving(call)
            labels = (model.name, str(model.version))
            assert model.batcher is not None and operation.prepare is not None  # resolve() returns ready versions
            with model.batcher.reading():  # sheds before the body is parsed
                binary_length = call.binary_length if v2 else None
                check_content_type(call.content_type, binary_length)
                prepared = operation.prepare(model, split_body(body, binary_length))
            if prepared is None:
                return False
            request = model.batcher.watch(prepared.sequences, timeout_seconds=self._timeout, gone=gone)
        except Exception as exc:
            self._answer(write, error_answer(exc, v2=v2), labels, started)
            return True
        request.future.add_done_callback(_Answer(self, request, prepared, model, write, started, v2))
        return True

    def abandoned(self, call: Call) -> None:
        """Count a request whose client left before its whole body came, as the ASGI path counts it: nothing
        without a valid key, else the status of what stops it first (draining, an unknown model, overload), else
        499."""
        if call.forward or call.forward_only:
            return  # counted where it would have been answered, or by the ASGI path
        try:
            self._check_key(call)
        except Unauthorized:
            return
        labels = ("", "")
        try:
            model = self._serving(call)
            labels = (model.name, str(model.version))
            assert model.batcher is not None
            with model.batcher.reading():
                raise Abandoned("the client went away before its body was read")
        except Exception as exc:
            status = error_answer(exc, v2=call.operation.v2).status_code
        seconds = time.perf_counter() - call.started if labels[0] else None
        self._state.metrics.answered(*labels, status, seconds)

    def _check_key(self, call: Call) -> None:
        """Raise `Unauthorized` unless the call carries the API key (when one is set)."""
        expected = self._state.api_key
        if expected is not None:
            check_credentials(call.api_key, call.authorization, expected)

    def _serving(self, call: Call) -> ModelVersion:
        """The version that answers `call`, as `inference.serve` finds it: refused while draining, else resolved."""
        registry = self._state.registry
        if registry.draining:
            raise Draining("the server is shutting down; retry on another replica")
        return registry.resolve(call.name, call.version)

    async def _forward(self, call: Call, body: bytes, write: Write) -> None:
        """Send a stream request to the process that holds the streams and write its answer back; it checks the
        key, answers and counts the request there."""
        assert self._forward_to is not None
        scope = call.scope
        target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        parts = [scope["method"].encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in scope["headers"]:
            if name not in _NOT_FORWARDED:
                parts += (name, b": ", value, b"\r\n")
        parts += (b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body), body)
        try:
            async with asyncio.timeout(self._timeout + 5.0):
                reader, writer = await asyncio.open_unix_connection(self._forward_to)
                try:
                    writer.write(b"".join(parts))
                    answer = await reader.read()  # to the end: the answer closes the connection
                finally:
                    writer.close()
            response = _forwarded_answer(answer, to_head=scope["method"] == "HEAD")
        except (OSError, TimeoutError, ValueError) as exc:
            why = f"the HTTP process that holds the streams did not answer ({exc or type(exc).__name__})"
            response = error_answer(StateUnavailable(why), v2=call.operation.v2 or scope["path"].startswith("/v2/"))
        write(response)

    def _answer(self, write: Write, response: Response, labels: tuple[str, str], started: float) -> None:
        seconds = time.perf_counter() - started if labels[0] else None
        self._state.metrics.answered(*labels, response.status_code, seconds)
        write(response)


class _Answer:
    """The done callback of a queued request's future: its answer, formatted and written."""

    __slots__ = ("_direct", "_model", "_prepared", "_request", "_started", "_v2", "_write")

    def __init__(
        self,
        direct: DirectInference,
        request: PendingRequest,
        prepared: Prepared,
        model: ModelVersion,
        write: Write,
        started: float,
        v2: bool,
    ) -> None:
        self._direct, self._request, self._prepared, self._model = direct, request, prepared, model
        self._write, self._started, self._v2 = write, started, v2

    def __call__(self, future: asyncio.Future[list[Any]]) -> None:
        self._request.release()
        try:
            if future.cancelled():  # only the client leaving cancels it
                raise Abandoned("the caller went away before its answer")
            response = self._prepared.answer(future.result())
        except Exception as exc:
            response = error_answer(exc, v2=self._v2)
        model = self._model
        self._direct._answer(self._write, response, (model.name, str(model.version)), self._started)


def _forwardable(scope: Scope, limit: int, *, has_body: bool) -> bool:
    """Whether a stream request can be forwarded whole: a body with its Content-Length within `limit` (none for a
    GET or DELETE), not chunked."""
    length: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return False
        if name == b"content-length":
            if length is not None:
                return False
            length = value
    if length is None:
        return not has_body
    return length.isdigit() and int(length) <= limit


def _forwarded_answer(raw: bytes, *, to_head: bool = False) -> Response:
    """The answer the streams' process wrote (one HTTP/1.1 answer, then the end), to write back; to a HEAD, its
    head alone, its Content-Length kept (the protocol writes no body)."""
    head, blank, rest = raw.partition(b"\r\n\r\n")
    if not blank:
        raise ValueError("its answer ended early")
    status_line, *lines = head.split(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    for line in lines:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            length = int(value)
        elif name not in _NOT_FORWARDED:
            headers.append((name, value))
    if to_head:
        response = Response(b"", status_code=status)
        response.raw_headers = [*headers, *([(b"content-length", b"%d" % length)] if length is not None else [])]
        return response
    body = rest if length is None else rest[:length]
    if length is not None and len(body) < length:
        raise ValueError("its answer ended early")
    response = Response(body, status_code=status)
    response.raw_headers = [*headers, (b"content-length", b"%d" % len(body))]
    return response
