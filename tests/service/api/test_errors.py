"""Every bad-input class gets its 4xx in the one error shape, and the server answers the next good request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.api.conftest import Server

GOOD = {"inputs": [[[0.1, 0.2, 0.3, 0.4, 0.5]] * 3]}


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str, contains: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if response.request.url.path.startswith("/v2"):  # the Open Inference Protocol's own shape
        assert set(body) == {"error", "code"} and body["code"] == code, body
        assert contains in body["error"], body
        return
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    assert contains in body["error"]["message"], body


def assert_still_serving(client: httpx.Client) -> None:
    response = client.post("/v1/models/feat/predict", json=GOOD)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("inputs", "contains"),
    [
        ([[[0.1] * 5] * 3, [[0.1] * 5, [0.1] * 4]], "inputs[1][1]: expected 5 features, got 4"),
        ([[[0.1] * 5], []], "inputs[1]: empty sequence"),
        ([[[0.1] * 5] * 41], "inputs[0]: 41 steps, longer than max_length 40"),
        ([[[0.1, 0.2, "x", 0.4, 0.5]]], "inputs[0][0][2]: expected a number, got string"),
        ([[[0.1, 0.2, None, 0.4, 0.5]]], "inputs[0][0][2]: expected a number, got null"),
        ([[[0.1, 0.2, True, 0.4, 0.5]]], "inputs[0][0][2]: expected a number, got boolean"),
        ([[[0.1] * 5]] * 257, "inputs: 257 sequences, at most 256 per request"),
        ("not a list", "inputs: expected an array of sequences"),
    ],
)
def test_invalid_inputs_are_422_naming_the_index(client: httpx.Client, inputs: Any, contains: str) -> None:
    assert_error(client.post("/v1/models/feat/predict", json={"inputs": inputs}), 422, "invalid_input", contains)
    assert_still_serving(client)


def test_nan_and_infinity_are_422(client: httpx.Client) -> None:
    body = b'{"inputs": [[[0.1, 0.2, 0.3, 0.4, 0.5], [0.1, NaN, 0.3, 0.4, 0.5]]]}'
    response = client.post("/v1/models/feat/predict", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_input", "inputs[0][1][1]: not a finite")
    body = b'{"inputs": [[[0.1, 0.2, 0.3, 0.4, Infinity]]]}'
    response = client.post("/v1/models/feat/predict", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_input", "inputs[0][0][4]: not a finite")
    assert_still_serving(client)


def test_text_model_errors(client: httpx.Client) -> None:
    assert_error(
        client.post("/v1/models/text/predict", json={"inputs": ["ok", ""]}), 422, "invalid_input", "inputs[1]: empty"
    )
    assert_error(
        client.post("/v1/models/text/predict", json={"inputs": ["x" * 33]}),
        422,
        "invalid_input",
        "longer than max_length 32",
    )
    assert_error(
        client.post("/v1/models/text/predict", json={"inputs": [["a"]]}),
        422,
        "invalid_input",
        "inputs[0]: expected a string",
    )
    assert client.post("/v1/models/text/predict", json={"inputs": ["ok"]}).status_code == 200


def test_unknown_model_and_version_are_404(client: httpx.Client) -> None:
    assert_error(client.post("/v1/models/nope/predict", json=GOOD), 404, "model_not_found", "nope")
    assert_error(client.post("/v1/models/feat/versions/9/predict", json=GOOD), 404, "version_not_found")
    assert_error(client.post("/v1/models/feat/versions/x/predict", json=GOOD), 404, "version_not_found")
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")
    assert_error(client.get("/v2/models/nope"), 404, "model_not_found")
    assert_error(client.post("/v2/models/nope/infer", json={}), 404, "model_not_found")
    assert_still_serving(client)


def test_unknown_routes_and_methods_use_the_error_shape(client: httpx.Client) -> None:
    assert_error(client.get("/nowhere"), 404, "not_found", "/nowhere")
    assert_error(client.get("/v1/models/feat/predict"), 405, "method_not_allowed")


def test_bad_json_is_400(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    assert_error(client.post("/v1/models/feat/predict", content=b'{"inputs": [', headers=headers), 400, "invalid_json")
    assert_error(client.post("/v1/models/feat/predict", content=b"", headers=headers), 400, "invalid_json", "empty")
    assert_still_serving(client)


def test_wrong_content_type_is_415(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/feat/predict", content=b"inputs=1", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert_error(response, 415, "unsupported_media_type", "application/json")
    assert_still_serving(client)


def test_body_over_the_limit_is_413_by_header_and_by_stream(client: httpx.Client) -> None:
    big = b'{"inputs": [' + b"[[0.1, 0.2, 0.3, 0.4, 0.5]]," * 400_000 + b"[[0, 0, 0, 0, 0]]]}"
    assert len(big) > 8 << 20
    response = client.post("/v1/models/feat/predict", content=big, headers={"content-type": "application/json"})
    assert_error(response, 413, "payload_too_large", "limit")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds on the streamed size
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]

    response = client.post("/v1/models/feat/predict", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "payload_too_large")
    assert_still_serving(client)


def test_v2_bad_inputs_are_422(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 2, 4], "datatype": "FP32", "data": [0] * 8}]}
    assert_error(
        client.post("/v2/models/feat/infer", json=body),
        422,
        "invalid_input",
        "inputs[0].shape[2]: expected 5 features, got 4",
    )
    body = {"inputs": [{"name": "input", "shape": [1, 1, 5], "datatype": "INT8", "data": [0] * 5}]}
    assert_error(client.post("/v2/models/feat/infer", json=body), 422, "invalid_input", "datatype 'INT8'")
    assert_still_serving(client)
