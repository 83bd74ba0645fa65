from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from service.api.body import Body
from service.errors import InvalidInput
from service.validation import InputValidator, V2Request
from tests.service.specs import make_spec
from tests.service.test_fast_read import KNOWN, predict_agrees, v2_agrees


def features(max_sequences: int = 4, fixed_length: int | None = None) -> InputValidator:
    return InputValidator(make_spec(), max_sequences=max_sequences, fixed_length=fixed_length)


def text() -> InputValidator:
    return InputValidator(make_spec("text"), max_sequences=4)


def predict(validator: InputValidator, body: Any) -> list[np.ndarray]:
    """The sequences through the public seam; where the fast reader takes the body, it agrees with the
    explaining path."""
    raw = json.dumps(body).encode()
    if not validator.is_text:
        predict_agrees(raw)
    return validator.predict(Body(raw))


def test_feature_sequences_become_float32_arrays() -> None:
    [a, b] = predict(features(), {"inputs": [[[1, 2, 3]], [[0.5, 1, 2], [3, 4, 5.25]]]})
    assert a.dtype == np.float32 and a.shape == (1, 3)
    assert b.tolist() == [[0.5, 1, 2], [3, 4, 5.25]]


def test_text_is_lowercased_and_tokenized_with_unknowns() -> None:
    [ids] = predict(text(), {"inputs": ["Ab z"]})
    assert ids.dtype == np.int64
    assert ids.tolist() == [2, 3, 5, 1]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [[[1, 2, 3]], [[1, 2, 3], [1, 2]]]}, "inputs[1][1]: expected 3 features, got 2"),
        ({"inputs": [[]]}, "inputs[0]: empty sequence"),
        ({"inputs": [[[1, 2, 3]] * 11]}, "inputs[0]: 11 steps, longer than max_length 10"),
        ({"inputs": [[[1, 2, 3], [1, "x", 3]]]}, "inputs[0][1][1]: expected a number, got string"),
        ({"inputs": [[["1.5", 2, 3]]]}, "inputs[0][0][0]: expected a number, got string"),
        ({"inputs": [[[1, 2, 3], [1, None, 3]]]}, "inputs[0][1][1]: expected a number, got null"),
        ({"inputs": [[[1, 2, 3], [1, 2, True]]]}, "inputs[0][1][2]: expected a number, got boolean"),
        ({"inputs": [[[1, 2, 3], 4]]}, "inputs[0][1]: expected an array of 3 numbers, got number"),
        ({"inputs": ["abc"]}, "inputs[0]: expected an array of time steps, got string"),
        ({"inputs": [[[1, 2, 3]]] * 5}, "inputs: 5 sequences, at most 4 per request"),
        ({"inputs": []}, "inputs: no sequences"),
        ({"inputs": {"a": 1}}, "inputs: expected an array of sequences, got object"),
        ({"input": []}, "inputs: field required"),
        ([1, 2], "body: expected a JSON object with 'inputs', got array"),
        ({"inputs": [[[1, 2, 3], [1, 2, 1e39]]]}, "inputs[0][1][2]: not a finite float32 number"),
    ],
)
def test_bad_feature_inputs_name_the_offending_index(body: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        predict(features(), body)
    assert caught.value.message.startswith(message)


def test_nan_and_infinity_are_named() -> None:
    raw = b'{"inputs": [[[1, 2, 3]], [[1, 2, 3], [NaN, 2, 3]]]}'
    with pytest.raises(InvalidInput, match=r"inputs\[1\]\[1\]\[0\]: not a finite"):
        features().predict(Body(raw))
    raw = b'{"inputs": [[[1, 2, -Infinity]]]}'
    with pytest.raises(InvalidInput, match=r"inputs\[0\]\[0\]\[2\]: not a finite"):
        features().predict(Body(raw))


def test_integers_beyond_int64_are_numbers_too() -> None:
    [seq] = features().predict(Body(b'{"inputs": [[[1, 2, 18446744073709551615]]]}'))
    assert seq[0, 2] == np.float32(18446744073709551615)
    [seq] = features().predict(Body(b'{"inputs": [[[1, 2, 18446744073709551615]]], "n": "[]"}'))  # explained
    assert seq[0, 2] == np.float32(18446744073709551615)


def test_an_integer_reads_the_same_whatever_else_the_body_holds() -> None:
    """Regression: with a `true` elsewhere in the body, 2**60 + 2**36 + 1 went to float32 in one rounding
    rather than through float64 as every other body read it."""
    [plain] = features().predict(Body(b'{"inputs": [[[1152921573326323713, 0, 0]]]}'))
    [flagged] = features().predict(Body(b'{"inputs": [[[1152921573326323713, 0, 0]]], "x": true}'))
    assert plain.tobytes() == flagged.tobytes() and plain[0, 0] == np.float32(float(1152921573326323713))


def test_the_explaining_path_explains_what_the_fast_reader_declined() -> None:
    with pytest.raises(InvalidInput, match=r"inputs\[0\]\[0\]\[2\]: expected a number, got array"):
        features().predict(Body(b'{"inputs": [[[1, 2, [3, 4]], [[], 5, 6]]]}'))
    with pytest.raises(InvalidInput, match="inputs: expected an array of sequences, got number"):
        features().predict(Body(b'{"inputs": [[[1, 2, 3]]], "inputs": 7}'))
    [ids] = text().predict(Body(b'{"inputs": ["abc"]}'))  # text models: the explaining path only
    assert ids.tolist() == [2, 3, 4]


def test_fixed_length_graphs_take_only_that_length() -> None:
    with pytest.raises(InvalidInput, match="exactly 4 steps, got 3"):
        predict(features(fixed_length=4), {"inputs": [[[1, 2, 3]] * 3]})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [""]}, "inputs[0]: empty sequence"),
        ({"inputs": ["abcabcabc"]}, "inputs[0]: 9 characters, longer than max_length 8"),
        ({"inputs": ["ab", 3]}, "inputs[1]: expected a string, got number"),
    ],
)
def test_bad_text_inputs(body: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        predict(text(), body)
    assert caught.value.message == message


# -- V2 -----------------------------------------------------------------------------


def v2(validator: InputValidator, body: Any, known: tuple[str, ...] = KNOWN, binary: bytes = b"") -> V2Request:
    """The request through the public seam; where the fast reader takes the body, it agrees with the
    explaining path."""
    raw = json.dumps(body).encode()
    if not validator.is_text:
        v2_agrees(raw, known)
    return validator.v2(Body(raw, binary), known_outputs=known)


def tensor(name: str, shape: list[int], datatype: str, data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_v2_flat_data_with_lengths_is_trimmed_per_row() -> None:
    data = list(range(2 * 3 * 3))
    request = v2(
        features(),
        {
            "id": "r1",
            "inputs": [tensor("input", [2, 3, 3], "FP32", data), tensor("lengths", [2], "INT64", [3, 1])],
            "outputs": [{"name": "label"}],
        },
    )
    assert request.id == "r1" and request.outputs == ("label",)
    first, second = request.sequences
    assert first.shape == (3, 3) and second.tolist() == [[9, 10, 11]]


def test_v2_nested_data_without_lengths_keeps_every_step() -> None:
    nested = [[[1, 2, 3], [4, 5, 6]]]
    [seq] = v2(features(), {"inputs": [tensor("input", [1, 2, 3], "FP32", nested)]}).sequences
    assert seq.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_v2_ragged_data_is_read_in_row_major_order() -> None:
    ragged = [[1, 2], [3], [], [4, [5, 6]]]
    [seq] = v2(features(), {"inputs": [tensor("input", [1, 2, 3], "FP32", ragged)]}).sequences
    assert seq.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_v2_text() -> None:
    request = v2(text(), {"inputs": [tensor("text", [2], "BYTES", ["ab", "C"])]})
    assert [s.tolist() for s in request.sequences] == [[2, 3], [4]]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([tensor("input", [1, 2, 4], "FP32", [0] * 8)], "inputs[0].shape[2]: expected 3 features, got 4"),
        ([tensor("input", [1, 2, 3], "FP64", [0] * 6)], "inputs[0]: datatype 'FP64', expected FP32"),
        ([tensor("input", [1, 2, 3], "FP32", [0] * 5)], "inputs[0].data: 5 elements, shape [1, 2, 3] needs 6"),
        (
            [tensor("input", [1, 2, 3], "FP32", [0, 0, 0, 0, "a", 0])],
            "inputs[0].data[4]: expected a number, got string",
        ),
        (
            [tensor("input", [1, 2, 3], "FP32", [0, 0, 0, 0, False, 0])],
            "inputs[0].data[4]: expected a number, got boolean",
        ),
        (
            [tensor("input", [1, 2, 3], "FP32", [[0, 0, 0], [0, None, 0]])],
            "inputs[0].data[4]: expected a number, got null",
        ),
        (
            [tensor("input", [1, 2], "FP32", [0, 0])],
            "inputs[0]: shape [1, 2], expected a list of 3 non-negative integers",
        ),
        ([tensor("input", [0, 2, 3], "FP32", [])], "inputs[0].shape[0]: no sequences"),
        ([tensor("input", [5, 1, 3], "FP32", [0] * 15)], "inputs[0].shape[0]: 5 sequences, at most 4 per request"),
        ([tensor("input", [1, 11, 3], "FP32", [0] * 33)], "inputs[0][0]: 11 steps, longer than max_length 10"),
        ([tensor("other", [1], "FP32", [0])], "inputs[0]: unknown input 'other'"),
        ([tensor("lengths", [1], "INT64", [1])], "inputs: input 'input' is required"),
        (
            [tensor("input", [2, 2, 3], "FP32", [0] * 12), tensor("lengths", [2], "INT64", [2, 3])],
            "inputs[1][1]: length 3 is outside 1..2",
        ),
        (
            [tensor("input", [2, 2, 3], "FP32", [0] * 12), tensor("lengths", [2], "INT64", [2, 0])],
            "inputs[1][1]: length 0 is outside 1..2",
        ),
        (
            [tensor("input", [2, 2, 3], "FP32", [0] * 12), tensor("lengths", [1], "INT64", [2])],
            "inputs[1]: shape [1], expected [2]",
        ),
        (
            [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}],
            "inputs[0]: binary_data_size 12 does not fit the binary data",
        ),
        ([{"name": "input", "shape": [1, 1, 3], "datatype": "FP32"}], "inputs[0]: 'data' is required"),
    ],
)
def test_bad_v2_tensors_name_the_offending_index(inputs: list[Any], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        v2(features(), {"inputs": inputs})
    assert caught.value.message.startswith(message)


def test_v2_nan_is_named_by_its_index() -> None:
    raw = b'{"inputs": [{"name": "input", "shape": [1, 2, 3], "datatype": "FP32", "data": [0, 0, 0, 0, NaN, 0]}]}'
    with pytest.raises(InvalidInput, match=r"inputs\[0\]\[0\]\[1\]\[1\]: not a finite"):
        features().v2(Body(raw), known_outputs=())


def test_v2_unknown_output_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"outputs\[0\]: unknown output 'nope'"):
        v2(features(), {"inputs": [tensor("input", [1, 1, 3], "FP32", [0, 0, 0])], "outputs": [{"name": "nope"}]})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"parameters": [None, None]}, "parameters: expected an object, got array"),
        (
            {"inputs": [{**tensor("input", [1, 1, 3], "FP32", [0, 0, 0]), "parameters": "x"}]},
            "inputs[0].parameters: expected an object, got string",
        ),
        (
            {"outputs": [{"name": "probabilities", "parameters": 0}]},
            "outputs[0].parameters: expected an object, got number",
        ),
    ],
)
def test_v2_parameters_that_are_not_objects_are_refused(body: dict[str, Any], message: str) -> None:
    """Regression (schemathesis): they were ignored, and the request answered."""
    request = {"inputs": [tensor("input", [1, 1, 3], "FP32", [0, 0, 0])], **body}
    with pytest.raises(InvalidInput) as caught:
        v2(features(), request)
    assert caught.value.message == message


def test_v2_parameters_may_be_null_or_objects() -> None:
    tensor_ = {**tensor("input", [1, 1, 3], "FP32", [0, 0, 0]), "parameters": None}
    body = {"inputs": [tensor_], "parameters": {"x": 1}, "outputs": [{"name": "label", "parameters": {}}]}
    assert len(v2(features(), body).sequences) == 1


def binary_tensor(name: str, shape: list[int], datatype: str, size: int) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}


def test_v2_binary_tensor_data() -> None:
    values = np.arange(6, dtype="<f4")
    lengths = np.array([2, 1], dtype="<i8")
    body = {"inputs": [binary_tensor("input", [2, 1, 3], "FP32", 24), binary_tensor("lengths", [2], "INT64", 16)]}
    with pytest.raises(InvalidInput, match=r"inputs\[1\]\[0\]: length 2 is outside 1..1"):
        v2(features(), body, binary=values.tobytes() + lengths.tobytes())
    lengths = np.array([1, 1], dtype="<i8")
    first, second = v2(features(), body, binary=values.tobytes() + lengths.tobytes()).sequences
    assert first.tolist() == [[0, 1, 2]] and second.tolist() == [[3, 4, 5]]
    with pytest.raises(InvalidInput, match="4 bytes of binary data belong to no input"):
        v2(features(), body, binary=values.tobytes() + lengths.tobytes() + b"more")
    with pytest.raises(InvalidInput, match="24 bytes of binary data, shape \\[2, 2, 3\\] needs 48"):
        v2(features(), {"inputs": [binary_tensor("input", [2, 2, 3], "FP32", 24)]}, binary=values.tobytes())


def test_v2_binary_bytes() -> None:
    blob = b"".join(len(t).to_bytes(4, "little") + t for t in (b"ab", b"C"))
    request = v2(text(), {"inputs": [binary_tensor("text", [2], "BYTES", len(blob))]}, binary=blob)
    assert [s.tolist() for s in request.sequences] == [[2, 3], [4]]
    with pytest.raises(InvalidInput, match="truncated"):
        v2(text(), {"inputs": [binary_tensor("text", [2], "BYTES", len(blob) - 1)]}, binary=blob[:-1])
