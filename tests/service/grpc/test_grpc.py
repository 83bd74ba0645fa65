"""The Open Inference Protocol over gRPC, against a real server on 127.0.0.1, through Triton's own gRPC
client (`tritonclient.grpc`) used unchanged: health, metadata, inference with raw contents (its default)
and typed contents, answers equal to /predict's, and each error as its gRPC status code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.service.api.conftest import sample_value
from tests.service.grpc.conftest import API_KEY, SMALL_BODY_BYTES, Servers

TOLERANCE = 1e-6  # float32 probabilities against /predict's float64 JSON: they should be identical

RNG = np.random.default_rng(7)
FEAT = RNG.normal(size=(3, 6, 5)).astype(np.float32)
FEAT_LENGTHS = [6, 2, 4]
TAGGER = RNG.normal(size=(2, 5, 4)).astype(np.float32)
TAGGER_LENGTHS = [5, 3]
TEXTS = ["anna", "bob marley", "o'neil"]


@pytest.fixture
def client(servers: Servers) -> Iterator[triton.InferenceServerClient]:
    user = servers.client()
    try:
        yield user
    finally:
        user.close()


@pytest.fixture
def stub(servers: Servers) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """Triton's generated stub, for typed contents (tritonclient's InferInput always sends raw)."""
    with grpc.insecure_channel(servers.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def predict(servers: Servers, model: str, inputs: list[Any]) -> Any:
    response = httpx.post(f"{servers.http.url}/v1/models/{model}/predict", json={"inputs": inputs}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["outputs"]


def feature_inputs(batch: np.ndarray, lengths: list[int]) -> list[triton.InferInput]:
    main = triton.InferInput("input", list(batch.shape), "FP32")
    main.set_data_from_numpy(batch)
    steps = triton.InferInput("lengths", [len(lengths)], "INT64")
    steps.set_data_from_numpy(np.asarray(lengths, dtype=np.int64))
    return [main, steps]


def text_inputs(texts: list[str]) -> list[triton.InferInput]:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.asarray([t.encode() for t in texts], dtype=np.object_))
    return [tensor]


def status(raised: pytest.ExceptionInfo[triton.InferenceServerException]) -> str:
    return str(raised.value.status())


# -- health and metadata ---------------------------------------------------------


def test_liveness_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("feat")
    assert client.is_model_ready("feat", "1")


def test_server_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "seqserve"
    assert metadata.version


@pytest.mark.parametrize("model", ["feat", "tagger", "text", "regress"])
def test_model_metadata_equals_the_http_edge(
    servers: Servers, client: triton.InferenceServerClient, model: str
) -> None:
    over_grpc = client.get_model_metadata(model, as_json=True)
    over_http = httpx.get(f"{servers.http.url}/v2/models/{model}", timeout=30).json()
    for tensor in over_grpc["inputs"] + over_grpc["outputs"]:
        tensor["shape"] = [int(d) for d in tensor["shape"]]  # JSON of int64: strings
    assert over_grpc == over_http


def test_model_metadata_of_one_version(client: triton.InferenceServerClient) -> None:
    assert client.get_model_metadata("feat", "1").versions == ["1"]
    assert client.get_model_metadata("feat").versions == ["1", "2"]


# -- inference ---------------------------------------------------------------------


def test_a_feature_classifier_with_raw_contents_answers_as_predict(
    servers: Servers, client: triton.InferenceServerClient
) -> None:
    result = client.infer("feat", feature_inputs(FEAT, FEAT_LENGTHS), request_id="r-1")
    response = result.get_response()
    assert response.raw_output_contents, "a raw request gets a raw answer"
    assert (response.model_name, response.model_version, response.id) == ("feat", "2", "r-1")
    expected = predict(servers, "feat", [FEAT[i, :n].tolist() for i, n in enumerate(FEAT_LENGTHS)])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities, [e["probabilities"] for e in expected], atol=TOLERANCE, rtol=0)
    assert [label.decode() for label in result.as_numpy("label")] == [e["label"] for e in expected]


def test_a_tagger_with_raw_contents_answers_as_predict(servers: Servers, client: triton.InferenceServerClient) -> None:
    result = client.infer("tagger", feature_inputs(TAGGER, TAGGER_LENGTHS))
    expected = predict(servers, "tagger", [TAGGER[i, :n].tolist() for i, n in enumerate(TAGGER_LENGTHS)])
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("label")
    assert probabilities.shape == (2, 5, 4) and labels.shape == (2, 5)
    for row, (length, answer) in enumerate(zip(TAGGER_LENGTHS, expected, strict=True)):
        np.testing.assert_allclose(probabilities[row, :length], answer["probabilities"], atol=TOLERANCE, rtol=0)
        assert [label.decode() for label in labels[row, :length]] == answer["labels"]
        assert set(labels[row, length:].tolist()) <= {b""}  # padding


def test_a_text_model_with_raw_contents_answers_as_predict(
    servers: Servers, client: triton.InferenceServerClient
) -> None:
    outputs = [triton.InferRequestedOutput("label"), triton.InferRequestedOutput("probabilities")]
    result = client.infer("text", text_inputs(TEXTS), outputs=outputs)
    assert [output.name for output in result.get_response().outputs] == ["label", "probabilities"]
    expected = predict(servers, "text", TEXTS)
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), [e["probabilities"] for e in expected], atol=TOLERANCE, rtol=0
    )
    assert [label.decode() for label in result.as_numpy("label")] == [e["label"] for e in expected]


def typed_request(model: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id="typed")
    if model == "text":
        tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(TEXTS)])
        tensor.contents.bytes_contents.extend(t.encode() for t in TEXTS)
        return request
    batch, lengths = (FEAT, FEAT_LENGTHS) if model == "feat" else (TAGGER, TAGGER_LENGTHS)
    main = request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
    main.contents.fp32_contents.extend(batch.ravel().tolist())
    steps = request.inputs.add(name="lengths", datatype="INT64", shape=[len(lengths)])
    steps.contents.int64_contents.extend(lengths)
    return request


@pytest.mark.parametrize("model", ["feat", "tagger", "text"])
def test_typed_contents_get_a_typed_answer_equal_to_the_raw_one(
    client: triton.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub, model: str
) -> None:
    typed = stub.ModelInfer(typed_request(model), timeout=30)
    assert not typed.raw_output_contents and typed.id == "typed"
    inputs = {
        "feat": lambda: feature_inputs(FEAT, FEAT_LENGTHS),
        "tagger": lambda: feature_inputs(TAGGER, TAGGER_LENGTHS),
    }
    raw = client.infer(model, inputs[model]() if model in inputs else text_inputs(TEXTS))
    by_name = {output.name: output for output in typed.outputs}
    for output in raw.get_response().outputs:
        assert list(by_name[output.name].shape) == list(output.shape)
        expected = raw.as_numpy(output.name)
        if output.datatype == "BYTES":
            assert list(by_name[output.name].contents.bytes_contents) == expected.ravel().tolist()
        else:
            assert np.array_equal(np.asarray(by_name[output.name].contents.fp32_contents), expected.ravel())


def test_a_pinned_version(client: triton.InferenceServerClient) -> None:
    result = client.infer("feat", feature_inputs(FEAT, FEAT_LENGTHS), model_version="1")
    assert result.get_response().model_version == "1"


# -- errors --------------------------------------------------------------------------


def test_a_bad_input_is_invalid_argument_naming_the_field(client: triton.InferenceServerClient) -> None:
    wrong = RNG.normal(size=(1, 3, 4)).astype(np.float32)  # feat takes 5 features
    with pytest.raises(triton.InferenceServerException) as raised:
        client.infer("feat", feature_inputs(wrong, [3]))
    assert status(raised) == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[0].shape[2]: expected 5 features, got 4" in raised.value.message()

    tensor = triton.InferInput("nope", [1], "BYTES")
    tensor.set_data_from_numpy(np.asarray([b"x"], dtype=np.object_))
    with pytest.raises(triton.InferenceServerException) as raised:
        client.infer("text", [tensor])
    assert status(raised) == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[0]: unknown input 'nope'" in raised.value.message()


def test_bad_typed_contents_are_invalid_argument_naming_the_field(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = typed_request("feat")
    request.inputs[1].contents.int64_contents[1] = 7  # longer than the batch's 6 steps
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[1][1]: length 7 is outside 1..6" in raised.value.details()

    request = typed_request("text")
    request.inputs[0].contents.bytes_contents[2] = b"\xff"
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0].contents.bytes_contents[2]: not valid UTF-8" in raised.value.details()
    assert ("seqserve-error-code", "invalid_input") in raised.value.trailing_metadata()


def test_an_unknown_model_or_version_is_not_found(client: triton.InferenceServerClient) -> None:
    for call in (
        lambda: client.infer("nope", text_inputs(TEXTS)),
        lambda: client.infer("feat", feature_inputs(FEAT, FEAT_LENGTHS), model_version="9"),
        lambda: client.get_model_metadata("nope"),
        lambda: client.is_model_ready("nope"),
    ):
        with pytest.raises(triton.InferenceServerException) as raised:
            call()
        assert status(raised) == "StatusCode.NOT_FOUND", raised.value.message()


def test_inference_is_counted_by_grpc_status(servers: Servers, client: triton.InferenceServerClient) -> None:
    def counted(code: str) -> float:
        return sample_value(servers.http.metrics(), "seqserve_grpc_requests_total", {"model": "text", "code": code})

    ok, invalid = counted("OK"), counted("INVALID_ARGUMENT")
    client.infer("text", text_inputs(["ok"]))
    with pytest.raises(triton.InferenceServerException):
        client.infer("text", text_inputs([""]))  # an empty sequence
    assert counted("OK") == ok + 1
    assert counted("INVALID_ARGUMENT") == invalid + 1


# -- API key and message size ---------------------------------------------------------


def test_an_api_key_is_required_when_configured(keyed_servers: Servers) -> None:
    client = keyed_servers.client()
    try:
        assert client.is_server_live() and client.is_server_ready()  # health needs no key
        for headers in (None, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
            for call in (
                lambda h=headers: client.infer("text", text_inputs(["anna"]), headers=h),
                lambda h=headers: client.get_model_metadata("text", headers=h),
                lambda h=headers: client.get_server_metadata(headers=h),
                lambda h=headers: client.is_model_ready("text", headers=h),
            ):
                with pytest.raises(triton.InferenceServerException) as raised:
                    call()
                assert status(raised) == "StatusCode.UNAUTHENTICATED", raised.value.message()
        for headers in ({"authorization": f"Bearer {API_KEY}"}, {"x-api-key": API_KEY}):
            result = client.infer("text", text_inputs(["anna"]), headers=headers)
            assert result.as_numpy("label").shape == (1,)
            assert client.is_model_ready("text", headers=headers)
    finally:
        client.close()


def test_a_message_over_the_body_limit_is_resource_exhausted(keyed_servers: Servers) -> None:
    client = keyed_servers.client()
    big = np.zeros((8, 40, 5), dtype=np.float32)  # 6400 bytes of raw contents
    assert big.nbytes > SMALL_BODY_BYTES
    try:
        with pytest.raises(triton.InferenceServerException) as raised:
            client.infer("feat", feature_inputs(big, [40] * 8), headers={"x-api-key": API_KEY})
        assert status(raised) == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        client.close()
