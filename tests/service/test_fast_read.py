"""The fast reader agrees with the validator's explaining path: for every body, generated or one of the
edge cases below, `read_predict` and `read_v2` either decline (None) or return exactly what the explaining
path returns, bit for bit; and they take the well-formed bodies clients send."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.body import parse_json
from service.errors import InvalidInput, InvalidJSON
from service.fast_read import Limits, read_predict, read_v2
from service.validation import InputValidator, V2Request
from tests.service.specs import make_spec

KNOWN = ("probabilities", "label")


def limits(fixed_length: int | None = None) -> Limits:
    """What the fast reader knows of the model `validator` validates for."""
    max_length = 10 if fixed_length is None else min(10, fixed_length)
    return Limits(features=3, max_length=max_length, fixed_length=fixed_length, max_sequences=4)


def validator(fixed_length: int | None = None) -> InputValidator:
    return InputValidator(make_spec(), max_sequences=4, fixed_length=fixed_length)


def assert_same_sequences(fast: list[np.ndarray], slow: list[np.ndarray]) -> None:
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()  # bit for bit, -0.0 included


def predict_agrees(raw: bytes, fixed_length: int | None = None) -> list[np.ndarray] | None:
    """What the fast reader makes of a /predict body, having checked that the explaining path agrees."""
    fast = read_predict(raw, limits(fixed_length))
    if fast is not None:
        with _refused_by_the_explaining_path():
            slow = validator(fixed_length).predict_document(parse_json(raw))
        assert_same_sequences(fast, slow)
    return fast


def v2_agrees(
    raw: bytes, known: tuple[str, ...] = KNOWN, fixed_length: int | None = None
) -> tuple[str | None, list[np.ndarray], tuple[str, ...] | None] | None:
    """What the fast reader makes of a V2 body, having checked that the explaining path agrees."""
    fast = read_v2(raw, limits(fixed_length), known)
    if fast is not None:
        with _refused_by_the_explaining_path():
            slow = validator(fixed_length).v2_document(parse_json(raw), known_outputs=known)
        assert (fast[0], fast[2]) == (slow.id, slow.outputs)
        assert_same_sequences(fast[1], slow.sequences)
    return fast


@contextlib.contextmanager
def _refused_by_the_explaining_path() -> Iterator[None]:
    try:
        yield
    except (InvalidInput, InvalidJSON) as exc:
        raise AssertionError(f"the fast reader took a body the explaining path refuses: {exc.message}") from exc


def explained_v2(raw: bytes, known: tuple[str, ...] = KNOWN, binary: bytes = b"") -> V2Request:
    return validator().v2_document(parse_json(raw), known_outputs=known, binary=binary)


# -- /predict -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"inputs": [[[1, 2, 3]], [[0.5, 1, 2], [3, 4, 5.25]]]}',
        b'{"inputs":[[[-0.0,1e-50,3.4028235e38],[18446744073709551615,-9223372036854775808,0.1]]]}',
        b' { "model" : "ignored" , "inputs" :\n[ [ [ 1.5e3 , -2E-3 , 7 ] ] ] } ',
        b'{"inputs": [[[0.1, 0.2, 0.3]]], "options": {"n": 1}}',
        b'{"inputs": [[[1152921573326323713, 0, 0]]]}',  # 2**60 + 2**36 + 1: float64 first, then float32
    ],
)
def test_well_formed_bodies_are_read_exactly_as_explained(raw: bytes) -> None:
    fast = predict_agrees(raw)
    assert fast is not None, "the body is well formed: the fast reader takes it"
    assert all(seq.dtype == np.float32 for seq in fast)


PREDICT_EDGE_CASES = [
    # a step that nests an array, balanced by another step's empty one: 6 numbers for 2 x 3
    b'{"inputs": [[[1, 2, [3, 4]], [[], 5, 6]]]}',
    b'{"inputs": [[[1, 2, 3]]], "inputs": 7}',  # duplicate key: the parsed JSON keeps the last
    b'{"inputs": [[[1, 2, 3]]], "\\u0069nputs": 7}',  # the same key, spelt with an escape
    b'{"inputs": [[[1, 2, 3]]], "note": "[brackets in a string]"}',
    b'{"inputs": [[[1, 2, 3], [NaN, 2, 3]]]}',
    b'{"inputs": [[[1, 2, 3], [1, 2, 1e39]]]}',
    b'{"inputs": [[[1, 2, 1' + b"0" * 400 + b"]]]}",
    b'{"inputs": [[[1, 2, 3], [1, 2, true]]]}',
    b'{"inputs": [[[1, 2, 3], [1, null, 3]]]}',
    b'{"inputs": [[["1.5", 2, 3]]]}',
    b'{"inputs": [[[1, 2, 3]], [[1, 2, 3], [1, 2]]]}',
    b'{"inputs": [[[1, 2, 3], 4]]}',
    b'{"inputs": [[]]}',
    b'{"inputs": []}',
    b'{"inputs": [[[1, 2, 3]]] * 5}',
    b'{"inputs": [[[1, 2, 3]]]',
    b"",
    b"[1, 2]",
]


@pytest.mark.parametrize("raw", PREDICT_EDGE_CASES)
def test_anything_unusual_is_declined(raw: bytes) -> None:
    assert read_predict(raw, limits()) is None


def test_fixed_length_graphs_take_only_that_length() -> None:
    assert read_predict(b'{"inputs": [[[1, 2, 3], [1, 2, 3], [1, 2, 3]]]}', limits(fixed_length=4)) is None
    assert predict_agrees(b'{"inputs": [[[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]]]}', fixed_length=4) is not None


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
def test_generated_well_formed_bodies_are_read_bit_for_bit_as_explained(inputs: list[Any]) -> None:
    raw = json.dumps({"inputs": inputs}).encode()
    fast = predict_agrees(raw)
    try:
        validator().predict_document(parse_json(raw))
    except InvalidInput:  # finite doubles beyond float32's range: refused either way
        assert fast is None
        return
    assert fast is not None


@given(_anything)
@settings(max_examples=500, deadline=None, derandomize=True)
def test_generated_bodies_are_declined_or_read_as_explained(inputs: Any) -> None:
    predict_agrees(json.dumps({"inputs": inputs}).encode())


@pytest.mark.parametrize("raw", PREDICT_EDGE_CASES)
def test_edge_cases_are_declined_or_read_as_explained(raw: bytes) -> None:
    with contextlib.suppress(InvalidJSON):
        predict_agrees(raw)


# -- V2 -----------------------------------------------------------------------------------------


def tensor(name: str, shape: list[int], datatype: str, data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_flat_numeric_v2_data_is_read_from_the_text() -> None:
    raw = json.dumps(
        {
            "id": "r",
            "inputs": [
                tensor("input", [2, 2, 3], "FP32", [0.5, -1, 2e-3, 4, 5, 6, 7, 8, 9, 10, 11, 12.25]),
                tensor("lengths", [2], "INT64", [2, 1]),
            ],
            "outputs": [{"name": "label", "parameters": {"a": [1]}}],
            "parameters": {"p": {"q": [[]]}},
        }
    ).encode()
    fast = v2_agrees(raw)
    assert fast is not None
    request_id, sequences, outputs = fast
    assert request_id == "r" and outputs == ("label",)
    assert [s.shape for s in sequences] == [(2, 3), (1, 3)]


def test_v2_data_nested_as_its_shape_is_read_from_the_text() -> None:
    nested = [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9.5], [0, 0, 0]]]
    raw = json.dumps({"inputs": [tensor("input", [2, 2, 3], "FP32", nested), tensor("lengths", [2], "INT32", [2, 1])]})
    fast = v2_agrees(raw.encode())
    assert fast is not None and [s.tolist() for s in fast[1]] == [nested[0], nested[1][:1]]


V2_EDGE_CASES = [
    b'{"inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [[1, 2, 3]]}]}',
    b'{"inputs": [{"name": "input", "shape": [1, 2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, [6]]]}]}',
    b'{"inputs": [{"name": "input", "shape": [1, 2, 3], "datatype": "FP32", "data": [[[1, 2, 3], [4, 5]], []]}]}',
    b'{"inputs": [], "inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}',
    b'{"inputs": [{"name": "input", "name": "lengths", "shape": [1, 1, 3], "datatype": "FP32", "data": [1]}]}',
    b'{"inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, NaN]}]}',
    b'{"inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 1e39]}]}',
    # an integer beyond int64: NumPy picks the dtype case by case
    b'{"inputs": [{"name": "input", "shape": [1, 1, 2], "datatype": "FP32", "data": [1, 18446744073709551615]}]}',
    b'{"inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, true, 3]}]}',
    b'{"id": "[", "inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}',
    b'{"id": 7, "inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}',
    b'{"inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]}],'
    b' "outputs": [{"name": "label"}, {"name": "label", "name": "nope"}]}',
    b'{"inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 3],'
    b' "parameters": {"binary_data_size": 0}}]}',
    b'{"inputs": [{"name": "input", "shape": [2, 1, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},'
    b' {"name": "lengths", "shape": [2], "datatype": "INT64", "data": [1.0, 1]}]}',
]


@pytest.mark.parametrize("raw", V2_EDGE_CASES)
def test_unusual_v2_bodies_are_declined(raw: bytes) -> None:
    assert read_v2(raw, limits(), KNOWN) is None
    with contextlib.suppress(InvalidInput):
        explained_v2(raw)  # and the explaining path reads them


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
def test_generated_v2_bodies_are_declined_or_read_as_explained(tensors: list[dict[str, Any]]) -> None:
    v2_agrees(json.dumps({"inputs": tensors}).encode())


@st.composite
def _v2_requests(draw: st.DrawFn) -> tuple[dict[str, Any], list[Any]]:
    """A V2 feature request near the well-formed one (its data flat or nested as its shape), and its numbers."""
    batch, time = draw(st.integers(1, 5)), draw(st.integers(0, 11))
    values = draw(st.lists(_v2_number, min_size=batch * time * 3, max_size=batch * time * 3))
    data: Any = values
    if draw(st.booleans()):
        data = [[values[(b * time + t) * 3 : (b * time + t + 1) * 3] for t in range(time)] for b in range(batch)]
    body: dict[str, Any] = {"inputs": [tensor("input", [batch, time, 3], "FP32", data)]}
    if draw(st.booleans()):
        lengths = draw(st.lists(st.integers(-1, 12), min_size=batch, max_size=batch))
        body["inputs"].append(tensor("lengths", [batch], draw(st.sampled_from(["INT64", "INT32"])), lengths))
    if draw(st.booleans()):
        body["id"] = draw(st.one_of(st.text(max_size=4), st.integers()))
    if draw(st.booleans()):
        names = st.sampled_from([*KNOWN, "logits"])
        body["outputs"] = [{"name": name} for name in draw(st.lists(names, max_size=3))]
    if draw(st.booleans()):
        body["parameters"] = draw(st.one_of(st.none(), st.just({"x": 1}), st.just([])))
    return body, values


@given(_v2_requests(), st.sampled_from([None, 4]))
@settings(max_examples=400, deadline=None, derandomize=True)
def test_generated_v2_requests_are_read_as_explained(
    request: tuple[dict[str, Any], list[Any]], fixed: int | None
) -> None:
    body, values = request
    raw = json.dumps(body).encode()
    fast = v2_agrees(raw, fixed_length=fixed)
    try:
        validator(fixed).v2_document(parse_json(raw), known_outputs=KNOWN)
    except InvalidInput:
        assert fast is None
        return
    if not any(type(x) is int and x >= 2**63 for x in values):  # integers beyond int64: left to the explaining path
        assert fast is not None, raw
