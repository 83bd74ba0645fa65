"""Token-id inputs (`input.kind: tokens`), over /v1, V2 JSON and binary, and gRPC; the unknown-character
policy of text models."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from service.api.body import Body
from service.errors import InvalidInput
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.tensors import infer_document
from service.model_json import ModelJson
from service.validation import InputValidator
from tests.service.specs import make_spec, spec_document

KNOWN = ("probabilities", "label", "logits")


def tokens_spec(dtype: str = "int32", **input_overrides: Any) -> ModelJson:
    document = spec_document()
    document["input"] = {"kind": "tokens", "max_length": 6, "vocabulary_size": 10, "padding_id": 0} | input_overrides
    document["graph"]["input_dtype"] = dtype
    return ModelJson.model_validate(document)


def tokens(dtype: str = "int32") -> InputValidator:
    return InputValidator(tokens_spec(dtype), max_sequences=4)


def predict(validator: InputValidator, body: Any) -> list[np.ndarray]:
    return validator.predict(Body(json.dumps(body).encode()))


def v2(validator: InputValidator, body: Any, binary: bytes = b"") -> list[np.ndarray]:
    return validator.v2(Body(json.dumps(body).encode(), binary), known_outputs=KNOWN).sequences


def test_token_ids_are_sequences_of_integers() -> None:
    [a, b] = predict(tokens(), {"inputs": [[3, 4, 5], [9]]})
    assert a.dtype == np.int64 and a.tolist() == [3, 4, 5] and b.tolist() == [9]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [[1, 2], [3, 10]]}, "inputs[1][1]: token id 10 is outside 0..9 (vocabulary_size 10)"),
        ({"inputs": [[-1]]}, "inputs[0][0]: token id -1 is outside 0..9 (vocabulary_size 10)"),
        ({"inputs": [[1, 2**70]]}, f"inputs[0][1]: expected an integer token id, got {float(2**70)!r}"),
        ({"inputs": [[1, 4.0]]}, "inputs[0][1]: expected an integer token id, got 4.0"),
        ({"inputs": [[1, True]]}, "inputs[0][1]: expected an integer token id, got boolean"),
        ({"inputs": [[1, "2"]]}, "inputs[0][1]: expected an integer token id, got string"),
        ({"inputs": [[[1, 2]]]}, "inputs[0][0]: expected an integer token id, got array"),
        ({"inputs": ["abc"]}, "inputs[0]: expected an array of token ids, got string"),
        ({"inputs": [[]]}, "inputs[0]: empty sequence"),
        ({"inputs": [[1] * 7]}, "inputs[0]: 7 tokens, longer than max_length 6"),
    ],
)
def test_bad_token_ids_name_the_offending_index(body: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        predict(tokens(), body)
    assert str(caught.value) == message


def tensor(name: str, shape: list[int], datatype: str, data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


@pytest.mark.parametrize("datatype", ["INT32", "INT64"])
def test_v2_takes_int32_and_int64_token_ids_with_lengths(datatype: str) -> None:
    body = {
        "inputs": [tensor("input", [2, 3], datatype, [[1, 2, 3], [4, 0, 0]]), tensor("lengths", [2], "INT64", [3, 1])]
    }
    a, b = v2(tokens(), body)
    assert a.tolist() == [1, 2, 3] and b.tolist() == [4]


def test_v2_binary_int32_token_ids() -> None:
    ids = np.array([[5, 6], [7, 8]], dtype="<i4")
    body = {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "INT32", "parameters": {"binary_data_size": 16}}]}
    a, b = v2(tokens(), body, ids.tobytes())
    assert a.tolist() == [5, 6] and b.tolist() == [7, 8]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([tensor("input", [1, 2], "INT64", [1, 10])], "inputs[0][0][1]: token id 10 is outside 0..9"),
        ([tensor("input", [1, 2], "FP32", [1.0, 2.0])], "inputs[0]: datatype 'FP32', expected INT64 or INT32"),
        ([tensor("input", [1, 2], "INT64", [1.5, 2])], "inputs[0].data: token ids must be integers"),
        ([tensor("input", [1, 2, 1], "INT64", [1, 2])], "expected a list of 2 non-negative integers"),
        ([tensor("text", [1], "BYTES", ["ab"])], "unknown input 'text'; this model takes 'input' and 'lengths'"),
    ],
)
def test_v2_bad_token_ids(inputs: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        v2(tokens(), {"inputs": inputs})
    assert message in str(caught.value)


def test_v2_padding_past_a_length_is_not_checked() -> None:
    body = {"inputs": [tensor("input", [1, 3], "INT64", [1, 2, 99]), tensor("lengths", [1], "INT32", [2])]}
    [seq] = v2(tokens(), body)
    assert seq.tolist() == [1, 2]


def test_grpc_int32_contents_reach_the_same_validator() -> None:
    request = pb.ModelInferRequest(model_name="m")
    ids = request.inputs.add(name="input", datatype="INT32", shape=[2, 2])
    ids.contents.int_contents.extend([1, 2, 3, 12])
    document, binary = infer_document(request)
    with pytest.raises(InvalidInput, match=r"inputs\[0\]\[1\]\[1\]: token id 12 is outside 0..9"):
        tokens().v2_document(document, known_outputs=KNOWN, binary=binary)
    ids.contents.int_contents[3] = 4
    document, binary = infer_document(request)
    request_raw = pb.ModelInferRequest(model_name="m", raw_input_contents=[np.array([[1, 2], [3, 4]], "<i4").tobytes()])
    request_raw.inputs.add(name="input", datatype="INT32", shape=[2, 2])
    for doc, data in (infer_document(request), infer_document(request_raw)):
        sequences = tokens().v2_document(doc, known_outputs=KNOWN, binary=data).sequences
        assert [s.tolist() for s in sequences] == [[1, 2], [3, 4]]


def test_token_models_need_a_vocabulary_size_and_an_integer_graph() -> None:
    with pytest.raises(ValueError, match=r"input\.vocabulary_size is required"):
        tokens_spec(vocabulary_size=None)
    with pytest.raises(ValueError, match=r"input\.padding_id must be < vocabulary_size 10"):
        tokens_spec(padding_id=10)
    with pytest.raises(ValueError, match=r"needs graph\.input_dtype 'int64' or 'int32'"):
        tokens_spec("float32")


def text(unknown: str) -> InputValidator:
    document = spec_document("text")
    document["input"]["tokenizer"]["unknown"] = unknown
    return InputValidator(ModelJson.model_validate(document), max_sequences=4)


def test_unknown_characters_map_to_the_unknown_id_only_when_the_model_says_so() -> None:
    assert make_spec("text").input.tokenizer is not None and make_spec("text").input.tokenizer.unknown == "map"
    [ids] = predict(text("map"), {"inputs": ["Abz"]})
    assert ids.tolist() == [2, 3, 1]
    with pytest.raises(InvalidInput) as caught:
        predict(text("reject"), {"inputs": ["ab", "Abzé"]})
    assert str(caught.value) == "inputs[1][2]: character 'z' is not in the model's vocabulary"
    [a] = v2(text("reject"), {"inputs": [tensor("text", [1], "BYTES", ["cab"])]})
    assert a.tolist() == [4, 2, 3]
