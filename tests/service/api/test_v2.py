"""Open Inference Protocol V2 over HTTP: health, metadata and inference through the same batcher."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.api.conftest import Server, softmax
from tests.service.conftest import BuiltRepository


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_server_health_and_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    metadata = client.get("/v2").json()
    assert metadata["name"] == "seqserve" and isinstance(metadata["extensions"], list)
    assert "binary_tensor_data" in metadata["extensions"]  # inputs and outputs
    assert "model_repository" in metadata["extensions"]  # the index always; load and unload when turned on


def test_model_metadata_and_readiness(client: httpx.Client) -> None:
    feat = client.get("/v2/models/feat").json()
    assert feat["name"] == "feat" and feat["versions"] == ["1", "2"] and feat["platform"] == "onnxruntime_onnx"
    assert feat["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, -1, 5]},
        {"name": "lengths", "datatype": "INT64", "shape": [-1]},
    ]
    assert {o["name"]: o["shape"] for o in feat["outputs"]} == {
        "probabilities": [-1, 3],
        "label": [-1],
        "logits": [-1, 3],
    }
    assert client.get("/v2/models/feat/versions/1").json()["versions"] == ["1"]
    text = client.get("/v2/models/text").json()
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    tagger = client.get("/v2/models/tagger").json()
    assert {o["name"]: o["shape"] for o in tagger["outputs"]}["probabilities"] == [-1, -1, 4]
    assert client.get("/v2/models/regress").json()["outputs"] == [
        {"name": "values", "datatype": "FP32", "shape": [-1, 2]}
    ]
    assert client.get("/v2/models/feat/ready").json() == {"name": "feat", "ready": True}
    assert client.get("/v2/models/feat/versions/1/ready").status_code == 200
    assert client.get("/v2/models/feat/versions/7/ready").status_code == 404


def test_infer_with_lengths_matches_predict_and_the_reference(
    client: httpx.Client, test_repository: BuiltRepository
) -> None:
    rng = np.random.default_rng(11)
    lengths = [3, 1, 8]
    batch = rng.normal(size=(3, 8, 5)).astype(np.float32)
    body = {
        "id": "req-7",
        "inputs": [
            {"name": "input", "shape": [3, 8, 5], "datatype": "FP32", "data": batch.ravel().tolist()},
            {"name": "lengths", "shape": [3], "datatype": "INT64", "data": lengths},
        ],
    }
    response = client.post("/v2/models/feat/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "feat" and answer["model_version"] == "2" and answer["id"] == "req-7"
    outputs = {o["name"]: o for o in answer["outputs"]}
    probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    assert outputs["probabilities"]["shape"] == [3, 3] and outputs["label"]["shape"] == [3]
    sequences = [batch[row, :n].tolist() for row, n in enumerate(lengths)]
    predicted = client.post("/v1/models/feat/predict", json={"inputs": sequences}).json()["outputs"]
    for row, seq in enumerate(sequences):
        expected = softmax(test_repository.references["feat"](seq))
        np.testing.assert_allclose(probabilities[row], expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(probabilities[row], predicted[row]["probabilities"], atol=1e-4, rtol=0)
        assert outputs["label"]["data"][row] == predicted[row]["label"]


def test_infer_with_nested_data_without_lengths_and_chosen_outputs(client: httpx.Client) -> None:
    data = [[[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]
    body = {
        "inputs": [{"name": "input", "shape": [2, 2, 3], "datatype": "FP32", "data": data}],
        "outputs": [{"name": "label"}],
    }
    answer = client.post("/v2/models/equal/versions/1/infer", json=body).json()
    assert [o["name"] for o in answer["outputs"]] == ["label"]
    assert answer["outputs"][0]["shape"] == [2] and "id" not in answer


def test_infer_text_and_tagging(client: httpx.Client, test_repository: BuiltRepository) -> None:
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["Grace", "alan turing"]}]}
    outputs = {o["name"]: o for o in client.post("/v2/models/text/infer", json=body).json()["outputs"]}
    probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(2, 2)
    np.testing.assert_allclose(probabilities[1], softmax(test_repository.references["text"]("alan turing")), atol=1e-4)

    steps = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 10
    body = {
        "inputs": [
            {"name": "input", "shape": [2, 3, 4], "datatype": "FP32", "data": steps.ravel().tolist()},
            {"name": "lengths", "shape": [2], "datatype": "INT64", "data": [3, 2]},
        ]
    }
    outputs = {o["name"]: o for o in client.post("/v2/models/tagger/infer", json=body).json()["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 3, 4] and outputs["label"]["shape"] == [2, 3]
    labels: list[Any] = outputs["label"]["data"]
    assert labels[5] == "" and all(labels[:5]), "steps past a sequence's length are padding"
    steps_probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(2, 3, 4)
    np.testing.assert_allclose(
        steps_probabilities[1, :2], softmax(test_repository.references["tagger"](steps[1, :2].tolist())), atol=1e-4
    )


def test_infer_regression(client: httpx.Client, test_repository: BuiltRepository) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    [values] = client.post("/v2/models/regress/infer", json=body).json()["outputs"]
    assert values["name"] == "values" and values["shape"] == [1, 2]
    np.testing.assert_allclose(values["data"], test_repository.references["regress"]([[1, 2, 3], [4, 5, 6]]), atol=1e-4)


def test_binary_tensor_extension_as_v2_clients_send_it(client: httpx.Client, test_repository: BuiltRepository) -> None:
    """tritonclient's default: a JSON header, then raw little-endian tensors; here the answer asked for in JSON
    (binary answers: test_v2_binary.py)."""
    batch = np.random.default_rng(12).normal(size=(2, 4, 5)).astype("<f4")
    lengths = np.array([4, 2], dtype="<i8")
    header = {
        "inputs": [
            {"name": "input", "shape": [2, 4, 5], "datatype": "FP32", "parameters": {"binary_data_size": batch.nbytes}},
            {"name": "lengths", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": lengths.nbytes}},
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
    }
    head = json.dumps(header).encode()
    response = client.post(
        "/v2/models/feat/infer",
        content=head + batch.tobytes() + lengths.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    [probabilities] = response.json()["outputs"]
    rows = np.asarray(probabilities["data"]).reshape(2, 3)
    np.testing.assert_allclose(rows[1], softmax(test_repository.references["feat"](batch[1, :2].tolist())), atol=1e-4)


def test_v2_errors_use_the_protocol_shape(client: httpx.Client) -> None:
    response = client.post("/v2/models/feat/infer", json={"inputs": []})
    assert response.status_code == 422
    body = response.json()
    assert isinstance(body["error"], str) and body["code"] == "invalid_input"
