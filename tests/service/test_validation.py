from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.body import parse_json
from service.errors import InvalidInput
from service.validation import InputValidator, may_hold_booleans, parse_v2_raw
from tests.service.specs import make_spec


def features(max_sequences: int = 4, fixed_length: int | None = None) -> InputValidator:
    return InputValidator(make_spec(), max_sequences=max_sequences, fixed_length=fixed_length)


def text() -> InputValidator:
    return InputValidator(make_spec("text"), max_sequences=4)


def predict(validator: InputValidator, body: Any) -> list[np.ndarray]:
    raw = json.dumps(body).encode()
    return validator.predict_request(parse_json(raw), scan_types=may_hold_booleans(raw))


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
        features().predict_request(parse_json(raw), scan_types=False)
    raw = b'{"inputs": [[[1, 2, -Infinity]]]}'
    with pytest.raises(InvalidInput, match=r"inputs\[0\]\[0\]\[2\]: not a finite"):
        features().predict_request(parse_json(raw), scan_types=False)


def test_integers_beyond_int64_are_numbers_too() -> None:
    [seq] = features().predict_request(parse_json(b'{"inputs": [[[1, 2, 18446744073709551615]]]}'), scan_types=False)
    assert seq[0, 2] == np.float32(18446744073709551615)


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


def v2(
    validator: InputValidator, body: Any, known: tuple[str, ...] = ("probabilities", "label"), binary: bytes = b""
) -> Any:
    """The request as the parsed path reads it; the text path (`parse_v2_raw`), when it takes the
    body, must give the same sequences or the same error."""
    return v2_both_paths(validator, json.dumps(body).encode(), known, binary)


def v2_both_paths(validator: InputValidator, raw: bytes, known: tuple[str, ...], binary: bytes = b"") -> Any:
    def read(document: Any) -> Any:
        return validator.v2_request(document, scan_types=may_hold_booleans(raw), known_outputs=known, binary=binary)

    slow, slow_error = None, None
    try:
        slow = read(parse_json(raw))
    except InvalidInput as exc:
        slow_error = exc
    document = parse_v2_raw(raw)
    if document is not None:
        try:
            fast = read(document)
        except InvalidInput as exc:
            assert slow_error is not None and exc.message == slow_error.message, (exc.message, slow_error)
        else:
            assert slow_error is None, slow_error.message
            assert (fast.id, fast.outputs) == (slow.id, slow.outputs)
            assert_same_sequences(fast.sequences, slow.sequences)
    if slow_error is not None:
        raise slow_error
    return slow


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
        features().v2_request(parse_json(raw), scan_types=False, known_outputs=())


def test_v2_unknown_output_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"outputs\[0\]: unknown output 'nope'"):
        v2(features(), {"inputs": [tensor("input", [1, 1, 3], "FP32", [0, 0, 0])], "outputs": [{"name": "nope"}]})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"parameters": [None, None]}, "parameters: expected an object, got array"),
        ({"inputs": [{**tensor("input", [1, 1, 3], "FP32", [0, 0, 0]), "parameters": "x"}]},
         "inputs[0].parameters: expected an object, got string"),
        ({"outputs": [{"name": "probabilities", "parameters": 0}]},
         "outputs[0].parameters: expected an object, got number"),
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


# -- /predict read straight from the JSON text --------------------------------------------------

def parsed_path(validator: InputValidator, raw: bytes) -> list[np.ndarray]:
    return validator.predict_request(parse_json(raw), scan_types=may_hold_booleans(raw))


def assert_same_sequences(fast: list[np.ndarray], slow: list[np.ndarray]) -> None:
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()  # bit for bit, -0.0 included


@pytest.mark.parametrize(
    "raw",
    [
        b'{"inputs": [[[1, 2, 3]], [[0.5, 1, 2], [3, 4, 5.25]]]}',
        b'{"inputs":[[[-0.0,1e-50,3.4028235e38],[18446744073709551615,-9223372036854775808,0.1]]]}',
        b' { "model" : "ignored" , "inputs" :\n[ [ [ 1.5e3 , -2E-3 , 7 ] ] ] } ',
        b'{"inputs": [[[0.1, 0.2, 0.3]]], "options": {"n": 1}}',
    ],
)
def test_well_formed_bodies_are_read_from_the_text_exactly_as_parsed(raw: bytes) -> None:
    fast = features().predict_raw(raw)
    assert fast is not None, "the body is well formed: the text path takes it"
    assert all(seq.dtype == np.float32 for seq in fast)
    assert_same_sequences(fast, parsed_path(features(), raw))


@pytest.mark.parametrize(
    "raw",
    [
        # a step that nests an array, balanced by another step's empty one: 6 numbers for 2 x 3
        b'{"inputs": [[[1, 2, [3, 4]], [[], 5, 6]]]}',
        b'{"inputs": [[[1, 2, 3]]], "inputs": 7}',  # duplicate key: the parsed path keeps the last
        b'{"inputs": [[[1, 2, 3]]], "\\u0069nputs": 7}',  # the same key, spelt with an escape
        b'{"inputs": [[[1, 2, 3]]], "note": "[brackets in a string]"}',
        b'{"inputs": [[[1, 2, 3], [NaN, 2, 3]]]}',
        b'{"inputs": [[[1, 2, 3], [1, 2, 1e39]]]}',
        b'{"inputs": [[[1, 2, 1' + b"0" * 400 + b']]]}',
        b'{"inputs": [[[1, 2, 3], [1, 2, true]]]}',
        b'{"inputs": [[[1, 2, 3], [1, null, 3]]]}',
        b'{"inputs": [[[1, 2, 3]], [[1, 2, 3], [1, 2]]]}',
        b'{"inputs": [[[1, 2, 3], 4]]}',
        b'{"inputs": [[]]}',
        b'{"inputs": []}',
        b'{"inputs": [[[1, 2, 3]]]',
        b"",
        b"[1, 2]",
    ],
)
def test_anything_unusual_is_left_to_the_parsed_path(raw: bytes) -> None:
    assert features().predict_raw(raw) is None
    assert text().predict_raw(b'{"inputs": ["abc"]}') is None  # text models always take the parsed path


def test_the_parsed_path_still_explains_what_the_text_path_left() -> None:
    with pytest.raises(InvalidInput, match=r"inputs\[0\]\[0\]\[2\]: expected a number, got array"):
        parsed_path(features(), b'{"inputs": [[[1, 2, [3, 4]], [[], 5, 6]]]}')
    with pytest.raises(InvalidInput, match="inputs: expected an array of sequences, got number"):
        parsed_path(features(), b'{"inputs": [[[1, 2, 3]]], "inputs": 7}')


_number = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
)
_step = st.lists(_number, min_size=3, max_size=3)
_well_formed = st.lists(st.lists(_step, min_size=1, max_size=10), min_size=1, max_size=4)
_leaf = st.one_of(_number, st.booleans(), st.none(), st.text(max_size=3))
_anything = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=40)


@given(_well_formed)
@settings(max_examples=300, deadline=None, derandomize=True)
def test_generated_well_formed_bodies_are_read_bit_for_bit_as_parsed(inputs: list[Any]) -> None:
    raw = json.dumps({"inputs": inputs}).encode()
    fast = features().predict_raw(raw)
    try:
        slow = parsed_path(features(), raw)
    except InvalidInput:  # finite doubles beyond float32's range: refused either way
        assert fast is None
        return
    assert fast is not None
    assert_same_sequences(fast, slow)


@given(_anything)
@settings(max_examples=500, deadline=None, derandomize=True)
def test_generated_bodies_get_the_same_answer_or_the_parsed_path(inputs: Any) -> None:
    raw = json.dumps({"inputs": inputs}).encode()
    fast = features().predict_raw(raw)
    if fast is None:
        return  # the parsed path decides, as for every body before the text path existed
    assert_same_sequences(fast, parsed_path(features(), raw))


# -- V2 read straight from the JSON text ------------------------------------------------------

def test_flat_numeric_v2_data_is_read_from_the_text() -> None:
    raw = json.dumps({
        "id": "r",
        "inputs": [tensor("input", [2, 2, 3], "FP32", [0.5, -1, 2e-3, 4, 5, 6, 7, 8, 9, 10, 11, 12.25]),
                   tensor("lengths", [2], "INT64", [2, 1])],
        "outputs": [{"name": "label", "parameters": {"a": [1]}}],
        "parameters": {"p": {"q": [[]]}},
    }).encode()
    document = parse_v2_raw(raw)
    assert document is not None
    main, lengths = document["inputs"][0]["data"], document["inputs"][1]["data"]
    assert main.dtype == np.float64 and lengths.dtype == np.int64 and lengths.tolist() == [2, 1]
    request = v2_both_paths(features(), raw, ("probabilities", "label"))
    assert [s.shape for s in request.sequences] == [(2, 3), (1, 3)]


@pytest.mark.parametrize(
    ("raw", "taken"),
    [
        (b'{"inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [[1, 2, 3]]}]}', False),
        (b'{"inputs": [], "inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}',
         False),
        (b'{"inputs": [{"name": "input", "name": "lengths", "shape": [1, 1, 3], "datatype": "FP32", "data": [1]}]}',
         False),
        (b'{"inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, NaN]}]}', False),
        (b'{"inputs": [{"name": "input", "shape": [1, 1, 2], "datatype": "FP32", "data": [1, 18446744073709551615]}]}',
         True),  # an integer beyond int64: read as the parsed path reads it, not from the text
        (b'{"inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, true, 3]}]}', True),
        (b'{"id": "[", "inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}',
         False),
    ],
)
def test_unusual_v2_bodies_keep_the_parsed_paths_reading(raw: bytes, taken: bool) -> None:
    document = parse_v2_raw(raw)
    assert (document is not None) == taken
    if document is not None:  # taken, but its data is left to the parsed path
        assert isinstance(document["inputs"][0]["data"], list)
    with contextlib.suppress(InvalidInput):
        v2_both_paths(features(), raw, ("probabilities", "label"))


_v2_number = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=2**63, max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)
_v2_data = st.one_of(
    st.lists(_v2_number, max_size=12),
    st.lists(st.integers(min_value=-2, max_value=12), max_size=12),
    st.lists(st.one_of(_v2_number, st.booleans(), st.none(), st.text(max_size=2)), max_size=6),
    st.lists(st.lists(_v2_number, max_size=3), max_size=4),
)
_v2_tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "lengths", "text", "other"]),
        "datatype": st.sampled_from(["FP32", "INT64", "INT32", "BYTES", "FP16"]),
        "shape": st.one_of(st.lists(st.integers(min_value=0, max_value=4), max_size=3), st.just([1, 2, 3])),
        "data": _v2_data,
    }
)


@given(st.lists(_v2_tensor, min_size=1, max_size=2))
@settings(max_examples=600, deadline=None, derandomize=True)
def test_generated_v2_bodies_get_the_same_answer_either_way(tensors: list[dict[str, Any]]) -> None:
    raw = json.dumps({"inputs": tensors}).encode()
    for validator in (features(), text()):
        with contextlib.suppress(InvalidInput):
            v2_both_paths(validator, raw, ("probabilities", "label"))
