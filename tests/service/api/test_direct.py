"""The direct path (`service.api.direct`) answers every inference request exactly as the ASGI path does.

Each request is sent twice to one server run as `seqserve serve` runs it (seqserve's protocol with its
direct path, over the ASGI app): once with `Content-Length`, which the direct path takes, and once with
the same body sent chunked, which it leaves to ASGI (`InferenceFastPath`, then FastAPI). Status, headers
(but `date`) and body must be the same byte for byte; a counting `DirectInference` shows which path ran.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from service.api import InferenceFastPath, create_app
from service.api.direct import DirectInference
from service.settings import Settings
from service.wire import ConnectionLimits, http_protocol
from tests.service.api.conftest import free_port, sample_value, wait_until
from tests.service.conftest import BuiltRepository

KEY = "direct-key"
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class CountingDirect(DirectInference):
    """DirectInference that counts the requests it was handed and those it left to ASGI."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.started = 0
        self.left = 0

    def start(self, *args: Any) -> bool:
        self.started += 1
        taken = super().start(*args)
        self.left += not taken
        return taken


@contextlib.contextmanager
def serving(repository: Path, **settings: Any) -> Iterator[tuple[int, CountingDirect]]:
    """seqserve's app behind seqserve's protocol and a counting direct path, on 127.0.0.1, in a thread."""
    port = free_port()
    config_settings = Settings(repository=repository, host="127.0.0.1", port=port, max_delay_ms=2, **settings)
    app = create_app(config_settings)
    direct = CountingDirect(app.state.seqserve)
    config = uvicorn.Config(
        InferenceFastPath(app),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=http_protocol(ConnectionLimits(), direct),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not become ready"
            time.sleep(0.05)
        yield port, direct
    finally:
        server.should_exit = True
        thread.join(30)


def request_bytes(path: str, body: bytes, headers: dict[str, str], *, chunked: bool) -> bytes:
    """One HTTP/1.1 POST: the body with its Content-Length, or in two chunks."""
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    if not chunked:
        return ("\r\n".join([*lines, f"content-length: {len(body)}"]) + "\r\n\r\n").encode("latin-1") + body
    head = ("\r\n".join([*lines, "transfer-encoding: chunked"]) + "\r\n\r\n").encode("latin-1")
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]) if part)
    return head + chunks + b"0\r\n\r\n"


def exchange(port: int, raw: bytes, answers: int = 1) -> list[Answer]:
    """Write `raw` (one request or several pipelined) on a fresh connection; read `answers` answers in order
    (every answer of seqserve's has a Content-Length; an interim `100 Continue` is skipped)."""
    found: list[Answer] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        buffer = b""
        while len(found) < answers:
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(65536)
                assert data, f"connection closed after {len(found)} answers"
                buffer += data
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            status_line, *lines = head.split(b"\r\n")
            status = int(status_line.split(b" ")[1])
            if status == 100:
                continue
            headers = [(n.lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)]
            length = int(dict(headers)[b"content-length"])
            while len(buffer) < length:
                data = sock.recv(65536)
                assert data, "connection closed mid-body"
                buffer += data
            found.append((status, [(n, v) for n, v in headers if n != b"date"], buffer[:length]))
            buffer = buffer[length:]
    return found


def both_ways(port: int, direct: CountingDirect, path: str, body: bytes, **headers: str) -> Answer:
    """The answer over the direct path, checked equal to the ASGI path's."""
    started = direct.started
    [direct_answer] = exchange(port, request_bytes(path, body, headers, chunked=False))
    assert direct.started == started + 1, f"{path}: the direct path did not take it"
    [asgi_answer] = exchange(port, request_bytes(path, body, headers, chunked=True))
    assert direct.started == started + 1, f"{path}: the direct path took a chunked body"
    assert direct_answer == asgi_answer, f"{path} {body[:80]!r}"
    return direct_answer


def binary_input(rows: list[list[list[float]]]) -> tuple[bytes, int]:
    """A V2 infer body with its input as binary tensor data: (body, JSON header length)."""
    data = b"".join(struct.pack("<f", value) for sequence in rows for step in sequence for value in step)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [len(rows), len(rows[0]), len(rows[0][0])],
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}],
        }
    )
    return header + data, len(header)


FEATURES = [[[0.1 * (i + j) for j in range(5)] for i in range(7)], [[0.3, -0.2, 0.5, 1.0, -1.0]] * 3]
INVALID: list[tuple[str, bytes, dict[str, str]]] = [
    ("/v1/models/feat/predict", b"not json", {}),
    ("/v1/models/feat/predict", b"", {}),
    ("/v1/models/feat/predict", b"[]", {}),
    ("/v1/models/feat/predict", b'{"inputs": []}', {}),
    ("/v1/models/feat/predict", b'{"inputs": [[[1, 2]]]}', {}),
    ("/v1/models/feat/predict", b'{"inputs": [[[1, 2, NaN, 4, 5]]]}', {}),
    ("/v1/models/feat/predict", b'{"inputs": [[[1, 2, 3, 4, 5]]]}', {"content-type": "text/plain"}),
    ("/v1/models/nope/predict", b'{"inputs": [[[1, 2, 3, 4, 5]]]}', {}),
    ("/v1/models/feat/versions/9/predict", b'{"inputs": [[[1, 2, 3, 4, 5]]]}', {}),
    ("/v1/models/feat/versions/x/predict", b'{"inputs": [[[1, 2, 3, 4, 5]]]}', {}),
    ("/v1/models/text/predict", b'{"inputs": [7]}', {}),
    ("/v2/models/feat/infer", b'{"inputs": []}', {}),
    ("/v2/models/feat/infer", b"{", {}),
    ("/v2/models/feat/infer", b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 5], '
     b'"data": [1, 2, 3, 4, 5]}], "outputs": [{"name": "nope"}]}', {}),
    ("/v2/models/feat/infer", b"{}", {"inference-header-content-length": "99"}),
    ("/v2/models/feat/infer", b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 5], '
     b'"data": [1, 2, 3, 4, 5]}], "parameters": {"sequence_id": 7, "sequence_start": true}}', {}),
]  # fmt: skip


def test_answers_and_errors_are_the_same_on_both_paths(test_repository: BuiltRepository) -> None:
    with serving(test_repository.path) as (port, direct):
        predict = orjson.dumps({"inputs": FEATURES})
        for path in ("/v1/models/feat/predict", "/v1/models/feat/versions/1/predict"):
            status, _, body = both_ways(port, direct, path, predict)
            assert status == 200 and len(orjson.loads(body)["outputs"]) == 2
        status, _, body = both_ways(port, direct, "/v1/models/text/predict", b'{"inputs": ["hello there", "b"]}')
        assert status == 200
        status, _, body = both_ways(port, direct, "/v1/models/tagger/predict", b'{"inputs": [[[1, 0, 0, 1]]]}')
        assert status == 200 and len(orjson.loads(body)["outputs"][0]["labels"]) == 1
        v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 7, 5], "data": FEATURES[0]}], "id": "a"}
        status, _, body = both_ways(port, direct, "/v2/models/feat/infer", orjson.dumps(v2))
        assert status == 200 and orjson.loads(body)["id"] == "a"
        binary, length = binary_input([FEATURES[1]])
        status, headers, body = both_ways(
            port,
            direct,
            "/v2/models/feat/infer",
            binary,
            **{"inference-header-content-length": str(length), "content-type": "application/octet-stream"},
        )
        assert status == 200 and b"inference-header-content-length" in dict(headers)
        left = direct.left
        statuses = []
        for path, body, headers in INVALID:
            statuses.append(both_ways(port, direct, path, body, **headers)[0])
        assert statuses == [400, 400, 422, 422, 422, 422, 415, 404, 404, 404, 422, 422, 400, 422, 400, 400]
        assert direct.left == left + 1  # the stream's chunk: a bidirectional model's 400 comes from the ASGI path
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        counted = sample_value(metrics, "seqserve_requests_total", {"model": "feat", "status": "200"})
        assert counted == 2 * 4, "\n".join(line for line in metrics.splitlines() if "requests_total" in line)


def test_the_api_key_is_checked_the_same_on_both_paths(test_repository: BuiltRepository) -> None:
    body = orjson.dumps({"inputs": FEATURES[:1]})
    with serving(test_repository.path, api_key=KEY) as (port, direct):
        assert both_ways(port, direct, "/v1/models/feat/predict", body)[0] == 401
        assert both_ways(port, direct, "/v2/models/feat/infer", b"{}", **{"x-api-key": "wrong"})[0] == 401
        assert both_ways(port, direct, "/v1/models/feat/predict", body, **{"x-api-key": KEY})[0] == 200
        assert both_ways(port, direct, "/v1/models/feat/predict", body, authorization=f"Bearer {KEY}")[0] == 200


def test_pipelined_requests_are_answered_in_order_whichever_path_takes_them(test_repository: BuiltRepository) -> None:
    bodies = [orjson.dumps({"inputs": [FEATURES[i % 2][: 1 + i]]}) for i in range(5)]
    with serving(test_repository.path) as (port, direct):
        alone = [exchange(port, request_bytes("/v1/models/feat/predict", b, {}, chunked=False))[0] for b in bodies]
        raw = b"".join(
            request_bytes("/v1/models/feat/predict", body, {}, chunked=i == 2) for i, body in enumerate(bodies)
        )
        started = direct.started
        assert exchange(port, raw, answers=len(bodies)) == alone
        assert direct.started == started + 4


@pytest.mark.parametrize("oversized", [False, True])
def test_what_the_direct_path_leaves_to_asgi(test_repository: BuiltRepository, oversized: bool) -> None:
    """Bodies over max_body_bytes get their 413 from the ASGI path; `Expect: 100-continue` is answered there."""
    with serving(test_repository.path, max_body_bytes=1024) as (port, direct):
        body = orjson.dumps({"inputs": [FEATURES[0] * (3 if oversized else 1)]})
        assert (len(body) > 1024) == oversized
        headers = {"expect": "100-continue"} if not oversized else {}
        raw = request_bytes("/v1/models/feat/predict", body, headers, chunked=False)
        [(status, _, _)] = exchange(port, raw)
        assert status == (413 if oversized else 200)
        assert direct.started == 0


def test_a_client_that_leaves_mid_body_is_counted_the_same_on_both_paths(test_repository: BuiltRepository) -> None:
    body = orjson.dumps({"inputs": FEATURES})
    with serving(test_repository.path) as (port, direct):

        def left() -> float:
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            return sample_value(metrics, "seqserve_requests_total", {"model": "feat", "status": "499"})

        for chunked in (False, True):
            raw = request_bytes("/v1/models/feat/predict", body, {}, chunked=chunked)
            before, started = left(), direct.started
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(raw[: len(raw) - len(body) // 2])  # the head and about half the body, then gone
                time.sleep(0.2)
            wait_until(lambda: left() == before + 1, timeout=10)  # noqa: B023 (read at once, in this iteration)
            assert direct.started == started  # never started: its body never came
