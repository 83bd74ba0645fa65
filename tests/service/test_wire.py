"""A response head is written together with its body, never alone; a head that no body follows goes out at once."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

import httpx

from service.wire import CoalescingTransport, WholeAnswer
from tests.service.api.conftest import run_server
from tests.service.conftest import BuiltRepository


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_a_head_is_held_until_its_body_and_both_go_out_in_one_write() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real)  # type: ignore[arg-type]
    transport.write(HEAD)
    assert real.writes == []
    transport.write(b"{}")
    transport.write(HEAD)
    transport.write(b"[]")
    assert real.writes == [HEAD + b"{}", HEAD + b"[]"]
    assert transport.is_closing() is False  # everything else is the real transport's


def test_interim_answers_and_whole_answers_go_out_at_once() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    whole = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad"
    transport.write(whole)
    assert real.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", whole]


def test_heads_that_no_body_follows_go_out_at_once() -> None:
    """204, 304 and Content-Length: 0 answers have no body to wait for; held, they would wait for the connection to
    close (the keep-alive timeout). Answers to HEAD skip this transport (`HttpProtocol.on_headers_complete`)."""
    heads = [
        b"HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ncontent-type: text/plain\r\n\r\n",
    ]
    real = RecordingTransport()
    transport = CoalescingTransport(real)  # type: ignore[arg-type]
    for head in heads:
        transport.write(head)
    assert real.writes == heads
    long = b"HTTP/1.1 200 OK\r\ncontent-length: 0123\r\n\r\n"  # not an empty body: held
    transport.write(long)
    assert real.writes == heads


def test_closing_flushes_a_held_head() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real)  # type: ignore[arg-type]
    transport.write(HEAD)
    transport.close()
    assert real.writes == [HEAD] and real.closed


def test_the_server_sends_each_answer_in_one_write(test_repository: BuiltRepository, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """strace counts the server's socket writes: one per answer, head and body together (one HTTP process: the
    one strace follows)."""
    with run_server(test_repository.path, "--http-workers", "1", log_dir=tmp_path) as server:
        port = int(server.url.rsplit(":", 1)[1])
        trace = tmp_path / "writes.txt"
        tracer = subprocess.Popen(
            [
                "strace",
                "-f",
                "-qq",
                "-s",
                "65536",
                "-e",
                "trace=write,sendto,sendmsg,writev",
                "-e",
                "signal=none",
                "-o",
                str(trace),
                "-p",
                str(server.process.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while "HTTP/1.1 200" not in (trace.read_text() if trace.exists() else ""):  # strace attached
                assert time.monotonic() < deadline, "strace never saw the server write"
                with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
                    probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    probe.recv(4096)
                time.sleep(0.05)
            body = b'{"inputs": [[[0.1, 0.2, 0.3, 0.4, 0.5]]]}'
            with httpx.Client(base_url=server.url, timeout=30) as client:
                answers = [
                    client.post("/v1/models/feat/predict", content=body, headers={"content-type": "application/json"})
                    for _ in range(5)
                ]
        finally:
            tracer.terminate()
            tracer.wait(timeout=10)
        assert all(a.status_code == 200 for a in answers)
        writes = trace.read_text().splitlines()
        answer = '{\\"model\\":\\"feat\\"'
        bodies = [w for w in writes if answer in w]
        assert len(bodies) == 5, writes[-20:]
        for write in bodies:  # the head, its blank line and the body: one write
            assert '"HTTP/1.1 200 OK\\r\\n' in write and "\\r\\n\\r\\n" + answer in write, write


class FakeFlow:
    write_paused = False


class FakeCycle:
    """What `WholeAnswer` reads and sets of uvicorn's request cycle."""

    def __init__(self, *, keep_alive: bool = True) -> None:
        self.transport = RecordingTransport()
        self.flow = FakeFlow()
        self.access_log = False
        self.default_headers = [(b"server", b"uvicorn")]
        self.keep_alive = keep_alive
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.waiting_for_100_continue = True
        self.message_event = asyncio.Event()
        self.responses = 0

    def on_response(self) -> None:
        self.responses += 1


JSON = [(b"content-length", b"2"), (b"content-type", b"application/json")]


def test_a_whole_answer_is_one_write_and_completes_the_cycle() -> None:
    cycle = FakeCycle()
    assert WholeAnswer(cycle)(200, JSON, b"{}")  # type: ignore[arg-type]
    assert cycle.transport.writes == [
        b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"
    ]
    assert cycle.response_started and cycle.response_complete and cycle.message_event.is_set()
    assert cycle.responses == 1 and not cycle.waiting_for_100_continue and not cycle.transport.closed


def test_a_whole_answer_without_keep_alive_says_so_and_closes() -> None:
    cycle = FakeCycle(keep_alive=False)
    assert WholeAnswer(cycle)(503, [(b"retry-after", b"1")], b"")  # type: ignore[arg-type]
    [write] = cycle.transport.writes
    assert write.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert write.endswith(b"retry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    assert cycle.transport.closed


def test_a_whole_answer_to_a_client_that_left_is_dropped() -> None:
    cycle = FakeCycle()
    cycle.disconnected = True
    assert WholeAnswer(cycle)(200, JSON, b"{}")  # type: ignore[arg-type]
    assert cycle.transport.writes == [] and cycle.responses == 0


def test_a_whole_answer_leaves_to_send_what_send_would_do_otherwise() -> None:
    for change, headers in (
        ("response_started", JSON),
        ("access_log", JSON),
        ("write_paused", JSON),
        ("", [(b"content-length", b"3")]),  # not the body's length
        ("", [(b"connection", b"close")]),
        ("", [(b"x-bad", b"a\r\nb")]),
    ):
        cycle = FakeCycle()
        if change == "write_paused":
            cycle.flow.write_paused = True
        elif change:
            setattr(cycle, change, True)
        assert not WholeAnswer(cycle)(200, headers, b"{}"), change or headers  # type: ignore[arg-type]
        assert cycle.transport.writes == [] and cycle.responses == 0
        assert cycle.response_complete is False
    for status in (100, 204, 304):  # no body and no content-length: as `send` writes them
        cycle = FakeCycle()
        assert not WholeAnswer(cycle)(status, [], b"")  # type: ignore[arg-type]
        assert cycle.transport.writes == [] and cycle.responses == 0
        assert cycle.response_complete is False


def test_a_whole_answer_whose_body_ends_in_a_blank_line_is_not_held() -> None:
    cycle = FakeCycle()
    socket_writes = RecordingTransport()
    cycle.transport = CoalescingTransport(socket_writes)  # type: ignore[assignment,arg-type]
    body = b"\x00\x01\r\n\r\n"  # binary tensor data may end like a head
    assert WholeAnswer(cycle)(200, [(b"content-length", b"6")], body)  # type: ignore[arg-type]
    assert socket_writes.writes == [b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncontent-length: 6\r\n\r\n" + body]


class RecordingProtocol:
    def __init__(self) -> None:
        self.asgi: list[tuple[object, object]] = []

    def run_asgi(self, cycle: object, app: object) -> None:
        self.asgi.append((cycle, app))


def test_a_direct_answer_that_cannot_go_whole_is_sent_through_asgi() -> None:
    """Writing paused (the client reads slowly): the direct path's answer waits for it as ASGI's `send` does."""
    from starlette.responses import Response

    from service.wire import DirectWriter

    protocol = RecordingProtocol()
    cycle = FakeCycle()
    DirectWriter(protocol, cycle)(Response(b"{}", media_type="application/json"))  # type: ignore[arg-type]
    assert cycle.transport.writes[0].endswith(b"\r\n\r\n{}") and protocol.asgi == []
    cycle = FakeCycle()
    cycle.flow.write_paused = True
    DirectWriter(protocol, cycle)(Response(b"{}", media_type="application/json"))  # type: ignore[arg-type]
    assert cycle.transport.writes == [] and [c for c, _ in protocol.asgi] == [cycle]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    asyncio.run(protocol.asgi[0][1]({"type": "http"}, receive, send))  # type: ignore[operator]
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"] and sent[1]["body"] == b"{}"
