"""Which outputs a V2 request asks for in binary (binary tensor data extension): each output's
`binary_data`, else the request's `binary_data_output`; both booleans. The fast reader takes only
requests answered wholly in JSON and leaves the rest to the explaining path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.api.body import Body
from service.errors import InvalidInput
from service.fast_read import Limits, V2Fields, read_v2
from service.validation import InputValidator, V2Request
from tests.service.specs import make_spec

KNOWN = ("probabilities", "label", "logits")
INPUT = {"name": "input", "shape": [1, 2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}


def infer(body: dict[str, Any]) -> V2Request:
    validator = InputValidator(make_spec(), max_sequences=4)
    return validator.v2(Body(json.dumps({"inputs": [INPUT], **body}).encode()), known_outputs=KNOWN)


def fast(body: dict[str, Any]) -> V2Fields | None:
    raw = json.dumps({"inputs": [INPUT], **body}).encode()
    return read_v2(raw, Limits(features=3, max_length=10, fixed_length=None, max_sequences=4), KNOWN)


def output(name: str, **parameters: Any) -> dict[str, Any]:
    return {"name": name, "parameters": parameters}


@pytest.mark.parametrize(
    ("body", "outputs", "binary"),
    [
        ({}, None, ()),
        ({"parameters": {"binary_data_output": False}}, None, ()),
        ({"parameters": {"binary_data_output": True}}, None, (True, True, True)),
        ({"outputs": [output("label", binary_data=True), {"name": "logits"}]}, ("label", "logits"), (True, False)),
        ({"outputs": [output("label", binary_data=False)]}, ("label",), ()),
        (
            {
                "parameters": {"binary_data_output": True},
                "outputs": [output("label", binary_data=False), output("logits")],
            },
            ("label", "logits"),
            (False, True),
        ),
        ({"outputs": [output("label", binary_data=True, classification=0, other="x")]}, ("label",), (True,)),
        (
            {"parameters": {"binary_data_output": True, "priority": 1}, "outputs": [{"name": "label"}]},
            ("label",),
            (True,),
        ),
    ],
)
def test_binary_flags_per_output_override_the_request_default(
    body: dict[str, Any], outputs: tuple[str, ...] | None, binary: tuple[bool, ...]
) -> None:
    request = infer(body)
    assert (request.outputs, request.binary_outputs) == (outputs, binary)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"outputs": [{"name": "label"}, output("logits", binary_data="true")]},
            "outputs[1].parameters.binary_data: expected a boolean, got string",
        ),
        (
            {"outputs": [output("label", binary_data=1)]},
            "outputs[0].parameters.binary_data: expected a boolean, got number",
        ),
        (
            {"outputs": [output("label", binary_data=None)]},
            "outputs[0].parameters.binary_data: expected a boolean, got null",
        ),
        (
            {"parameters": {"binary_data_output": "yes"}},
            "parameters.binary_data_output: expected a boolean, got string",
        ),
        (
            {"parameters": {"binary_data_output": [True]}, "outputs": [output("label", binary_data=True)]},
            "parameters.binary_data_output: expected a boolean, got array",
        ),
    ],
)
def test_binary_flags_that_are_not_booleans_are_refused(body: dict[str, Any], message: str) -> None:
    assert fast(body) is None
    with pytest.raises(InvalidInput) as caught:
        infer(body)
    assert caught.value.message == message


@pytest.mark.parametrize(
    "body",
    [
        {"parameters": {"binary_data_output": True}},
        {"outputs": [{"name": "probabilities"}, output("label", binary_data=True)]},
        # no output ends up binary, but the fast reader need not prove it
        {"parameters": {"binary_data_output": True}, "outputs": [output("label", binary_data=False)]},
    ],
)
def test_the_fast_reader_leaves_binary_answers_to_the_explaining_path(body: dict[str, Any]) -> None:
    assert fast(body) is None
    assert infer(body).sequences[0].shape == (2, 3)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"parameters": {"binary_data_output": False}, "outputs": [output("label", binary_data=False)]},
        {"parameters": None, "outputs": [{"name": "label", "parameters": None}, output("logits", other=True)]},
    ],
)
def test_the_fast_reader_takes_json_answers(body: dict[str, Any]) -> None:
    fields = fast(body)
    assert fields is not None
    explained = InputValidator(make_spec(), max_sequences=4).v2_document(
        {"inputs": [INPUT], **body}, known_outputs=KNOWN
    )
    assert explained.binary_outputs == () and fields[2] == explained.outputs


def test_a_text_model_reads_the_same_flags() -> None:
    validator = InputValidator(make_spec(kind="text"), max_sequences=4)
    body = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["abc"]}],
        "outputs": [output("label", binary_data=True), output("probabilities")],
    }
    request = validator.v2(Body(json.dumps(body).encode()), known_outputs=KNOWN)
    assert request.outputs == ("label", "probabilities") and request.binary_outputs == (True, False)
