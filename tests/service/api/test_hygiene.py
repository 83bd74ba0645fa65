"""Connection hygiene over raw sockets: HEAD answered at once, slow clients cut off, a bound on open connections.

Every wait here is bounded by a socket timeout or a deadline far above the setting under test; the
figures the tests print (`-s`) are what docs/reliability.md records, never asserted as speeds.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from service import runner
from tests.service.api.conftest import Server, run_server, wait_until
from tests.service.conftest import BuiltRepository

HEAD_TIMEOUT_SECONDS = 2.0
BODY_TIMEOUT_SECONDS = 3.0
KEEP_ALIVE_SECONDS = 30.0  # a response head held back until the connection closes would be that late
MARGIN_SECONDS = 20.0  # generous: other test runs share the machine's 2 cores
SOCKET_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 8
PREDICT = {"inputs": [[[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1]]]}


class Connection:
    """One raw HTTP/1.1 connection to 127.0.0.1, reading answers by their Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_SECONDS)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, path: str) -> None:
        self.send(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; unread {self.buffer!r}")
        self.buffer += chunk

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status, headers = self.head()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed_after_answer(self) -> bool:
        """Whether the server closed the connection once everything read so far was answered."""
        with contextlib.suppress(ConnectionResetError):
            return self.buffer == b"" and self.sock.recv(1) == b""
        return True

    def close(self) -> None:
        self.sock.close()


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def guarded_server(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    flags = [
        "--keep-alive-seconds",
        str(KEEP_ALIVE_SECONDS),
        "--head-timeout-seconds",
        str(HEAD_TIMEOUT_SECONDS),
        "--body-timeout-seconds",
        str(BODY_TIMEOUT_SECONDS),
    ]
    with run_server(test_repository.path, *flags, log_dir=tmp_path_factory.mktemp("hygiene")) as running:
        yield running


def get_paths(server: Server) -> list[str]:
    """Every GET route the server documents, with a model and version that exist (and a stream that does not)."""
    schema = httpx.get(f"{server.url}/openapi.json", timeout=SOCKET_TIMEOUT_SECONDS).json()
    paths = [path for path, operations in schema["paths"].items() if "get" in operations]
    return [path.replace("{name}", "feat").replace("{version}", "1").replace("{stream}", "s1") for path in paths]


def test_head_is_answered_at_once_like_get_without_a_body_on_a_kept_connection(guarded_server: Server) -> None:
    paths = get_paths(guarded_server)
    assert {"/healthz", "/readyz", "/metrics", "/v1/models", "/v2/health/live", "/v2/health/ready"} <= set(paths)
    assert "/v2/repository/index" in paths
    assert len(paths) == 15, paths  # every GET route, so a new one is probed with HEAD too
    expected = dict.fromkeys(paths, 200) | {"/openapi.json": 200, "/no/such/route": 404, "/predict": 405}
    expected["/v1/models/feat/streams/s1"] = 404  # no such stream
    connection = Connection(port_of(guarded_server))
    slowest = 0.0
    try:
        for path, status in expected.items():
            started = time.monotonic()
            connection.request("HEAD", path)
            head_status, head_headers = connection.head()  # a held head would come only when the connection closes
            slowest = max(slowest, time.monotonic() - started)
            assert connection.buffer == b"", (path, connection.buffer)  # no body
            connection.request("GET", path)  # the same connection carries on
            get_status, get_headers, body = connection.response()
            assert head_status == get_status == status, (path, head_status, get_status)
            assert head_headers["content-type"] == get_headers["content-type"], path
            if path != "/metrics":  # its text changes between the two requests
                assert head_headers["content-length"] == get_headers["content-length"] == str(len(body)), path
            if status == 405:
                assert head_headers["allow"] == "POST"
        connection.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert connection.head()[0] == 200  # pipelined: the HEAD answer, then the GET's
        assert connection.response()[2] == b'{"status":"ok"}'
    finally:
        connection.close()
    print(f"\n{len(expected)} paths, HEAD then GET on one kept connection: slowest HEAD answer {slowest * 1000:.1f} ms")


@dataclass
class Slow:
    """A client that stops part-way through its request."""

    connection: Connection
    kind: str
    path: str
    trickle: bool = False
    answer: bytes = b""
    closed_after: float | None = None


def _half_head(port: int, path: str) -> Slow:
    connection = Connection(port)
    connection.send(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty".encode())
    return Slow(connection, "head", path)


def _stalled_body(port: int, path: str, *, trickle: bool = False) -> Slow:
    connection = Connection(port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    connection.send(head.encode() + b'{"inputs": [')
    return Slow(connection, "body", path, trickle=trickle)


def test_slow_heads_and_bodies_get_408_and_are_closed_while_good_requests_are_served(guarded_server: Server) -> None:
    port = port_of(guarded_server)
    slow: list[Slow] = []
    try:
        for i in range(100):
            slow.append(_half_head(port, "/v1/models/feat/predict"))
            slow.append(_stalled_body(port, "/v1/models/feat/predict" if i % 2 else "/v2/models/feat/infer"))
        slow += [_stalled_body(port, "/v1/models/feat/predict", trickle=True) for _ in range(10)]
        started = time.monotonic()
        deadline = started + BODY_TIMEOUT_SECONDS + MARGIN_SECONDS
        selector = selectors.DefaultSelector()
        for client in slow:
            client.connection.sock.setblocking(False)
            selector.register(client.connection.sock, selectors.EVENT_READ, client)
        served, failed, next_trickle = 0, [], started + 0.5
        with httpx.Client(base_url=guarded_server.url, timeout=SOCKET_TIMEOUT_SECONDS) as good:
            while len(selector.get_map()) and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.05):
                    client = key.data
                    try:
                        chunk = client.connection.sock.recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    client.answer += chunk
                    if not chunk:
                        client.closed_after = time.monotonic() - started
                        selector.unregister(client.connection.sock)
                if time.monotonic() >= next_trickle:  # one more body byte every 0.5 s: never a whole body
                    next_trickle += 0.5
                    for client in slow:
                        if client.trickle and client.closed_after is None:
                            with contextlib.suppress(OSError):
                                client.connection.sock.send(b"[")
                for answer in (good.get("/healthz"), good.post("/v1/models/feat/predict", json=PREDICT)):
                    if answer.status_code == 200:
                        served += 1
                    else:
                        failed.append(answer.status_code)
    finally:
        for client in slow:
            client.connection.close()
    still_open = [c.path for c in slow if c.closed_after is None]
    assert not still_open, f"{len(still_open)} slow connections still open after {MARGIN_SECONDS} s of margin"
    for client in slow:
        limit = HEAD_TIMEOUT_SECONDS if client.kind == "head" else BODY_TIMEOUT_SECONDS
        assert client.closed_after is not None and client.closed_after >= limit - 1.0, client
        status_line, _, rest = client.answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 408 Request Timeout", client.answer
        head, _, body = rest.partition(b"\r\n\r\n")
        assert b"connection: close" in head
        expected_message = f"request {client.kind} not received within {limit:g} s"
        if client.path.startswith("/v2/"):
            assert json.loads(body) == {"error": expected_message, "code": "request_timeout"}
        else:
            assert json.loads(body) == {"error": {"code": "request_timeout", "message": expected_message}}
    assert failed == [] and served > 0, (served, failed)
    assert httpx.get(f"{guarded_server.url}/readyz", timeout=SOCKET_TIMEOUT_SECONDS).status_code == 200
    assert 1 <= guarded_server.log().count("connections closed:") <= 3  # a summary, not a line per connection
    assert "internal error" not in guarded_server.log()  # a body that timed out is the client's, not a 500
    heads = sorted(c.closed_after or 0.0 for c in slow if c.kind == "head")
    bodies = sorted(c.closed_after or 0.0 for c in slow if c.kind == "body")
    print(
        f"\n{len(heads)} half heads closed after {heads[0]:.2f}-{heads[-1]:.2f} s (timeout {HEAD_TIMEOUT_SECONDS:g} s);"
        f" {len(bodies)} stalled bodies (10 trickling) closed after {bodies[0]:.2f}-{bodies[-1]:.2f} s"
        f" (timeout {BODY_TIMEOUT_SECONDS:g} s); good requests meanwhile: {served} served, {len(failed)} failed"
    )


@pytest.fixture(scope="module")
def limited_server(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # NOTE: one HTTP process: max_connections is each process's (the file descriptors it guards are)
    flags = ["--max-connections", str(MAX_CONNECTIONS), "--keep-alive-seconds", "6", "--http-workers", "1"]
    with run_server(test_repository.path, *flags, log_dir=tmp_path_factory.mktemp("limited")) as running:
        yield running


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_timeout(limited_server: Server) -> None:
    connection = Connection(port_of(limited_server))
    connection.sock.settimeout(6 + MARGIN_SECONDS)
    started = time.monotonic()
    try:
        assert connection.sock.recv(1) == b""  # closed, nothing sent
    finally:
        connection.close()
    print(f"\nsilent connection closed after {time.monotonic() - started:.2f} s (keep-alive 6 s)")


def _served(port: int) -> Connection:
    """A connection the server answered 200 on and keeps open; other clients' connections may still be closing."""
    for _ in range(100):
        connection = Connection(port)
        connection.request("GET", "/healthz")
        if connection.response()[0] == 200:
            return connection
        connection.close()
        time.sleep(0.1)
    raise AssertionError("no connection was served")


def test_connections_past_the_limit_get_503_and_are_closed_while_open_ones_are_served(limited_server: Server) -> None:
    port = port_of(limited_server)
    held = [_served(port) for _ in range(MAX_CONNECTIONS)]
    refused: list[Connection] = []
    try:
        refused = [Connection(port) for _ in range(20)]
        for connection in refused:
            connection.request("POST", "/v1/models/feat/predict")
            status, headers, body = connection.response()
            assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
            assert json.loads(body)["error"]["code"] == "overloaded"
            assert connection.closed_after_answer()
        for connection in held:
            connection.request("GET", "/v1/models/feat")
            assert connection.response()[0] == 200
        assert httpx.get(f"{limited_server.url}/healthz", timeout=SOCKET_TIMEOUT_SECONDS).status_code == 503
        held.pop().close()

        def a_new_connection_is_served() -> bool:
            connection = Connection(port)
            connection.request("GET", "/healthz")
            try:
                return connection.response()[0] == 200
            finally:
                connection.close()

        wait_until(a_new_connection_is_served, timeout=30)
        assert "refused over the limit (8)" in limited_server.log()
    finally:
        for connection in held + refused:
            connection.close()
    print(f"\nlimit {MAX_CONNECTIONS}: 20 more connections, 20 x 503 then closed; the {MAX_CONNECTIONS} open ones 200")


def test_the_open_file_limit_is_raised_to_fit_max_connections(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    raised: list[tuple[int, int]] = []
    monkeypatch.setattr(runner.resource, "setrlimit", lambda _, limits: raised.append(limits))
    monkeypatch.setattr(runner.resource, "getrlimit", lambda _: (1024, 4096))
    runner.fit_fd_limit(2048)
    assert raised == [(2048 + runner.FD_RESERVE, 4096)] and not caplog.records
    monkeypatch.setattr(runner.resource, "getrlimit", lambda _: (1024, 2048))
    runner.fit_fd_limit(2048)
    assert raised[-1] == (2048, 2048)
    assert "open-file limit 2048 is below --max-connections 2048" in caplog.text
