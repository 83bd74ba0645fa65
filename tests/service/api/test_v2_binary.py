"""The binary tensor data extension for outputs, over real HTTP: the exact wire format, and Triton's own
HTTP client (`tritonclient.http`) used unchanged, its answers equal to /predict's."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.service.api.conftest import Server, softmax

TOLERANCE = 1e-6


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def triton_client(server: Server) -> Iterator[triton.InferenceServerClient]:
    user = triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=30.0)
    try:
        yield user
    finally:
        user.close()


def split_answer(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary data of a binary answer, checking the framing on the way."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header_length = int(response.headers["inference-header-content-length"])
    assert int(response.headers["content-length"]) == len(response.content)
    header = json.loads(response.content[:header_length])  # the header is exactly the JSON, nothing after it
    return header, response.content[header_length:]


def decode_bytes(blob: bytes) -> list[str]:
    elements, offset = [], 0
    while offset < len(blob):
        (size,) = struct.unpack_from("<I", blob, offset)
        elements.append(blob[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    assert offset == len(blob), "the last element runs past the tensor's bytes"
    return elements


FEAT_BATCH = np.random.default_rng(31).normal(size=(3, 6, 5)).astype(np.float32)
FEAT_LENGTHS = [6, 2, 4]


def feat_body(outputs: list[dict[str, Any]] | None, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "input", "shape": [3, 6, 5], "datatype": "FP32", "data": FEAT_BATCH.ravel().tolist()},
            {"name": "lengths", "shape": [3], "datatype": "INT64", "data": FEAT_LENGTHS},
        ]
    }
    if outputs is not None:
        body["outputs"] = outputs
    if parameters is not None:
        body["parameters"] = parameters
    return body


def test_the_wire_format_of_a_binary_answer(client: httpx.Client) -> None:
    asked = [
        {"name": "probabilities", "parameters": {"binary_data": True}},
        {"name": "logits"},
        {"name": "label", "parameters": {"binary_data": True}},
    ]
    header, data = split_answer(client.post("/v2/models/feat/infer", json=feat_body(asked)))
    as_json = client.post("/v2/models/feat/infer", json=feat_body(None)).json()
    expected = {output["name"]: output for output in as_json["outputs"]}

    probabilities, logits, label = header["outputs"]
    assert probabilities == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [3, 3],
        "parameters": {"binary_data_size": 3 * 3 * 4},
    }
    assert logits == expected["logits"], "an output not asked for in binary stays in the JSON"
    label_size = sum(4 + len(text.encode()) for text in expected["label"]["data"])
    assert label == {"name": "label", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": label_size}}
    assert len(data) == 36 + label_size, "the binary data is the binary outputs' bytes, nothing else"

    np.testing.assert_allclose(
        np.frombuffer(data[:36], dtype="<f4"), expected["probabilities"]["data"], atol=TOLERANCE, rtol=0
    )
    assert decode_bytes(data[36:]) == expected["label"]["data"]
    assert header["model_name"] == "feat" and header["model_version"] == "2"


def test_binary_data_output_asks_for_every_output_and_an_output_may_opt_out(client: httpx.Client) -> None:
    header, data = split_answer(
        client.post("/v2/models/feat/infer", json=feat_body(None, {"binary_data_output": True}))
    )
    assert [o["name"] for o in header["outputs"]] == ["probabilities", "label", "logits"]
    assert all("data" not in o for o in header["outputs"])
    assert len(data) == sum(o["parameters"]["binary_data_size"] for o in header["outputs"])

    opt_out = [{"name": "label", "parameters": {"binary_data": False}}, {"name": "logits"}]
    header, data = split_answer(
        client.post("/v2/models/feat/infer", json=feat_body(opt_out, {"binary_data_output": True}))
    )
    label, logits = header["outputs"]
    assert "parameters" not in label and len(label["data"]) == 3
    assert logits["parameters"] == {"binary_data_size": 36} and len(data) == 36


def test_a_json_answer_is_unchanged(client: httpx.Client) -> None:
    outputs = [{"name": "label", "parameters": {"binary_data": False}}]
    response = client.post("/v2/models/feat/infer", json=feat_body(outputs, {"binary_data_output": False}))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in response.headers
    assert [o["name"] for o in response.json()["outputs"]] == ["label"]


def test_binary_inputs_and_binary_outputs_together(client: httpx.Client) -> None:
    """A tagger, steps padded to the longest sequence: padding steps' labels are empty BYTES elements."""
    steps = np.random.default_rng(32).normal(size=(2, 5, 4)).astype("<f4")
    lengths = np.array([5, 2], dtype="<i8")
    head = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [2, 5, 4], "datatype": "FP32", "parameters": {"binary_data_size": 160}},
                {"name": "lengths", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    response = client.post(
        "/v2/models/tagger/infer",
        content=head + steps.tobytes() + lengths.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"},
    )
    header, data = split_answer(response)
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert [o["shape"] for o in header["outputs"]] == [[2, 5, 4], [2, 5], [2, 5, 4]]
    assert sizes[0] == sizes[2] == 2 * 5 * 4 * 4
    labels = decode_bytes(data[sizes[0] : sizes[0] + sizes[1]])
    assert len(labels) == 10 and all(labels[:7]) and labels[7:] == ["", "", ""]


@pytest.mark.parametrize(
    ("parameters", "outputs", "message"),
    [
        (None, [{"name": "label", "parameters": {"binary_data": "true"}}], "outputs[0].parameters.binary_data"),
        ({"binary_data_output": 1}, None, "parameters.binary_data_output"),
    ],
)
def test_a_binary_flag_that_is_not_a_boolean_is_a_422_naming_it(
    client: httpx.Client, parameters: dict[str, Any] | None, outputs: list[dict[str, Any]] | None, message: str
) -> None:
    response = client.post("/v2/models/feat/infer", json=feat_body(outputs, parameters))
    assert response.status_code == 422
    assert response.json() == {
        "error": f"{message}: expected a boolean, got {'string' if outputs else 'number'}",
        "code": "invalid_input",
    }


def test_unknown_output_parameters_are_ignored_as_before(client: httpx.Client) -> None:
    outputs = [{"name": "label", "parameters": {"binary_data": True, "classification": 0, "mine": [1]}}]
    header, data = split_answer(client.post("/v2/models/feat/infer", json=feat_body(outputs, {"other": "x"})))
    assert len(decode_bytes(data)) == 3 and header["outputs"][0]["parameters"]["binary_data_size"] == len(data)


# -- tritonclient.http, unchanged -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    model: str
    inputs: list[Any]  # per sequence: its steps [T, F], or its text
    tagging: bool = False


CASES = {
    "classifier": Case("feat", [FEAT_BATCH[row, :n] for row, n in enumerate(FEAT_LENGTHS)]),
    "tagger": Case(
        "tagger", [np.random.default_rng(33).normal(size=(n, 4)).astype(np.float32) for n in (3, 7, 1)], tagging=True
    ),
    "text": Case("text", ["Grace", "alan turing", "Ada Lovelace"]),
}


def triton_inputs(case: Case, binary: bool) -> list[triton.InferInput]:
    if isinstance(case.inputs[0], str):
        texts = triton.InferInput("text", [len(case.inputs)], "BYTES")
        texts.set_data_from_numpy(np.array([t.encode() for t in case.inputs], dtype=np.object_), binary_data=binary)
        return [texts]
    longest = max(len(steps) for steps in case.inputs)
    batch = np.zeros((len(case.inputs), longest, case.inputs[0].shape[1]), dtype=np.float32)
    for row, steps in enumerate(case.inputs):
        batch[row, : len(steps)] = steps
    values = triton.InferInput("input", list(batch.shape), "FP32")
    values.set_data_from_numpy(batch, binary_data=binary)
    lengths = triton.InferInput("lengths", [len(case.inputs)], "INT64")
    lengths.set_data_from_numpy(np.array([len(s) for s in case.inputs], dtype=np.int64), binary_data=binary)
    return [values, lengths]


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("inputs_binary", [True, False], ids=["binary-inputs", "json-inputs"])
@pytest.mark.parametrize("outputs_as", ["binary", "json", "mixed", "default"])
def test_tritonclient_answers_equal_predict(
    triton_client: triton.InferenceServerClient, client: httpx.Client, case: Case, inputs_binary: bool, outputs_as: str
) -> None:
    """`outputs_as`: every output asked for in binary, or in JSON, or the label alone in binary; or none asked
    for (tritonclient then sends `binary_data_output: true`)."""
    names = [output["name"] for output in triton_client.get_model_metadata(case.model)["outputs"]]
    assert names == ["probabilities", "label", "logits"]
    wanted = {"binary": names, "json": [], "mixed": ["label"], "default": names}[outputs_as]
    requested = (
        None
        if outputs_as == "default"
        else [triton.InferRequestedOutput(name, binary_data=name in wanted) for name in names]
    )
    result = triton_client.infer(case.model, triton_inputs(case, inputs_binary), outputs=requested, request_id="r1")

    answer = result.get_response()
    assert answer["id"] == "r1"
    for name in names:
        in_binary = "binary_data_size" in (result.get_output(name).get("parameters") or {})
        assert in_binary == (name in wanted), name
    probabilities = result.as_numpy("probabilities")
    labels = result.as_numpy("label")
    logits = result.as_numpy("logits")
    assert probabilities.dtype == np.float32 and logits.dtype == np.float32 and labels.dtype == np.object_

    sequences = [s if isinstance(s, str) else s.tolist() for s in case.inputs]
    predicted = client.post(f"/v1/models/{case.model}/predict", json={"inputs": sequences}).json()["outputs"]
    for row, expected in enumerate(predicted):
        if case.tagging:
            n = len(case.inputs[row])
            assert probabilities.shape[:2] == labels.shape == (len(case.inputs), max(map(len, case.inputs)))
            np.testing.assert_allclose(probabilities[row, :n], expected["probabilities"], atol=TOLERANCE, rtol=0)
            np.testing.assert_allclose(softmax(logits[row, :n]), expected["probabilities"], atol=TOLERANCE, rtol=0)
            assert [text(label) for label in labels[row]] == expected["labels"] + [""] * (labels.shape[1] - n)
            assert not probabilities[row, n:].any(), "steps past a sequence's length are padding"
        else:
            np.testing.assert_allclose(probabilities[row], expected["probabilities"], atol=TOLERANCE, rtol=0)
            np.testing.assert_allclose(softmax(logits[row]), expected["probabilities"], atol=TOLERANCE, rtol=0)
            assert text(labels[row]) == expected["label"]
