"""Faults inside the server, over real HTTP: a graph that raises at run time answers its own
request with a 500 carrying an error id (the traceback in the log only), the rest of the batch
and the next batch are served; model names and versions in paths never open a file."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.service.api.conftest import Server, run_server
from tests.service.conftest import BuiltRepository

FAULT = 7.0  # an input holding this value makes the graph index out of bounds


def faulty_graph(path: Path) -> None:
    """`[B, T, 3]` -> `[B, 2]`: row b is table[int(max(x[b]))]; a max of 2 or more is out of bounds,
    and ONNX Runtime raises, as a graph may at run time."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [2, 2], [0.1, 0.9, 0.8, 0.2])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])
    nodes = [
        helper.make_node("ReduceMax", ["input", "axes"], ["peak"], keepdims=0),
        helper.make_node("Cast", ["peak"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["logits"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "faulty",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "time", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[table, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def faulty_server(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("faults") / "repository"
    shutil.copytree(test_repository.path / "equal" / "1", root / "faulty" / "1")
    meta = json.loads((root / "faulty" / "1" / "model.json").read_text())
    meta.update(name="faulty", description="a graph that fails at run time on some inputs")
    (root / "faulty" / "1" / "model.json").write_text(json.dumps(meta))
    faulty_graph(root / "faulty" / "1" / "model.onnx")
    flags = ("--max-delay-ms", "50", "--max-batch-size", "8")  # a long hold: concurrent requests share a batch
    with run_server(root, *flags, log_dir=root.parent) as running:
        yield running


def seq(value: float) -> list[list[float]]:
    return [[value, 0.0, 0.0]] * 4


def test_a_batch_whose_runtime_raises_answers_500_with_an_error_id_and_the_next_batch_works(
    faulty_server: Server,
) -> None:
    inputs = [seq(0.0), seq(FAULT), seq(1.0), seq(0.0)]

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=faulty_server.url, timeout=60) as client:
            calls = [client.post("/v1/models/faulty/predict", json={"inputs": [s]}) for s in inputs]
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(together())
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 500, 200, 200], [r.text for r in responses]
    assert [r.json()["outputs"][0]["label"] for i, r in enumerate(responses) if i != 1] == ["yes", "no", "yes"]
    error = responses[1].json()["error"]
    assert error["code"] == "inference_failed"
    match = re.search(r"error id ([0-9a-f]{12})", error["message"])
    assert match is not None, error
    text = responses[1].text
    repository = str(faulty_server.log_path.parent)
    assert "Traceback" not in text and "model.onnx" not in text and repository not in text, text
    log = faulty_server.log()
    assert f"error id {match.group(1)}" in log and "Traceback" in log  # the traceback went to the log
    # The next batch, and V2, work.
    with httpx.Client(base_url=faulty_server.url, timeout=60) as client:
        assert client.post("/v1/models/faulty/predict", json={"inputs": [seq(1.0)] * 3}).status_code == 200
        tensor = {"name": "input", "shape": [1, 4, 3], "datatype": "FP32", "data": np.ravel(seq(FAULT)).tolist()}
        failed = client.post("/v2/models/faulty/infer", json={"inputs": [tensor]})
        assert failed.status_code == 500 and failed.json()["code"] == "inference_failed", failed.text
        assert "Traceback" not in failed.text and "model.onnx" not in failed.text
        assert client.get("/readyz").status_code == 200


TRAVERSALS = [
    "..",
    "%2e%2e",
    "%2E%2E%2F%2E%2E%2Fetc",
    "..%2f..%2fetc%2fpasswd",
    "%2fetc%2fpasswd",
    "faulty%2f..%2f..%2ffaulty",
    "%00",
    "faulty%00",
    "a" * 5000,
    "%c0%ae%c0%ae",
    "~root",
]


def raw_request(server: Server, method: str, path: str, body: bytes = b"") -> tuple[int, str]:
    """The path sent byte for byte: HTTP clients resolve `..` segments before sending."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body or None, headers={"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


@pytest.mark.parametrize("name", TRAVERSALS)
def test_model_names_and_versions_never_leave_the_repository(faulty_server: Server, name: str) -> None:
    body = json.dumps({"inputs": [seq(0.0)]}).encode()
    paths = [
        f"/v1/models/{name}",
        f"/v1/models/{name}/predict",
        f"/v1/models/faulty/versions/{name}",
        f"/v1/models/faulty/versions/{name}/predict",
        f"/v2/models/{name}",
        f"/v2/models/{name}/ready",
        f"/v2/models/{name}/infer",
        f"/v2/models/faulty/versions/{name}/infer",
    ]
    for path in paths:
        post = path.endswith(("predict", "infer"))
        status, text = raw_request(faulty_server, "POST" if post else "GET", path, body if post else b"")
        assert status in (404, 422), (path, status, text)
        assert "Traceback" not in text and str(faulty_server.log_path.parent) not in text, text
    assert raw_request(faulty_server, "POST", "/v1/models/faulty/predict", body)[0] == 200
    assert "internal error" not in faulty_server.log()
