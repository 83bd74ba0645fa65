"""The fast reader: a well-formed request of a feature model, read from its JSON text straight into NumPy.

Everything seqserve does only for speed when it reads a request lives here. Parsing a body into Python
objects and converting their numbers to NumPy one by one is the costliest part of reading a request, so a
well-formed body skips it: simdjson parses the text (one parser per thread, reused) and hands each array
of numbers over as one flat buffer.

Contract: one entry point per request kind, `read_predict` and `read_v2`. Each takes the JSON text and
what it must know about the model (`Limits`) and returns the request fully checked, exactly what the
validator's explaining path (`service.validation`) returns for that body, or None for anything it cannot
prove well-formed and valid: unusual JSON (duplicate keys, NaN, integers beyond 64 bits, brackets inside
strings, arrays nested other than as the request's shape), and every body the validator would refuse. It never raises a
client error: None hands the body to the explaining path, the one source of every error message.

For V2 it returns the whole checked request (id, sequences, requested outputs) rather than a document
with some fields converted and others not: the explaining path then reads parsed JSON only, one type per
field, and no message has two sources. The price is that the rules a valid request meets are stated
here a second time, as conditions to decline on; the agreement tests (tests/service/test_fast_read.py)
hold the two statements together.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import simdjson

V2Fields = tuple[str | None, list[np.ndarray], tuple[str, ...] | None]
"""A checked V2 request: id, sequences, requested outputs (None: every output)."""


@dataclass(frozen=True)
class Limits:
    """What the fast reader must know about a feature model."""

    features: int
    max_length: int  # already within a fixed-length graph's length
    fixed_length: int | None
    max_sequences: int

    def takes(self, steps: int) -> bool:
        return 0 < steps <= self.max_length and self.fixed_length in (None, steps)


def read_predict(raw: bytes, limits: Limits) -> list[np.ndarray] | None:
    """The sequences of a /predict body `{"inputs": [[[number, ...], ...], ...]}`, `[T, F]` float32 each."""
    document = _parse(raw)
    if document is None:
        return None
    try:
        # NOTE: of duplicate keys orjson keeps the last, simdjson finds the first: a body with two
        # (however spelt: keys come unescaped) is declined.
        if type(document) is not simdjson.Object or list(document.keys()).count("inputs") != 1:
            return None
        inputs = document.get("inputs")
        if type(inputs) is not simdjson.Array or not 0 < len(inputs) <= limits.max_sequences:
            return None
        features = limits.features
        sequences: list[np.ndarray] = []
        arrays = 1 + len(inputs)  # '[' of inputs, of each sequence, then of each step
        for seq in inputs:
            if type(seq) is not simdjson.Array or not limits.takes(len(seq)):
                return None
            if any(type(step) is not simdjson.Array or len(step) != features for step in seq):
                return None
            arrays += len(seq)
            # as_buffer refuses anything but numbers (booleans, null, strings, objects)
            values = _float32(np.frombuffer(seq.as_buffer(of_type="d"), dtype=np.float64)).reshape(len(seq), features)
            if not np.isfinite(values).all():
                return None
            sequences.append(values)
        # NOTE: each step holds `features` elements and every leaf is a number, but a step could
        # still nest an array (`[[1, 2], 3]`) that another step's empty one (`[[], 4]`) balances;
        # with exactly one '[' per array counted above, none can.
        return sequences if _brackets(raw) == arrays else None
    except (ValueError, TypeError, RuntimeError, OverflowError):
        return None
    finally:
        inputs = seq = document = None  # NOTE: the parser is reused only once its proxies are gone


def read_v2(raw: bytes, limits: Limits, known_outputs: Sequence[str]) -> V2Fields | None:
    """An Open Inference Protocol request with an FP32 `input` `[B, T, F]` and an optional INT64 or INT32
    `lengths` `[B]`, their `data` flat or nested as their shape, in the JSON text (no binary data), every
    output answered in JSON."""
    document = _parse(raw)
    if document is None:
        return None
    try:
        return _v2(raw, document, limits, known_outputs)
    except (ValueError, TypeError, RuntimeError, OverflowError):
        return None
    finally:
        document = None  # NOTE: the parser is reused only once its proxies are gone


def _v2(raw: bytes, document: Any, limits: Limits, known_outputs: Sequence[str]) -> V2Fields | None:
    top = _fields(document)
    if top is None:
        return None
    rest = {key: _python(value) for key, value in top.items() if key != "inputs"}
    request_id, requested = rest.get("id"), rest.get("outputs")
    if request_id is not None and type(request_id) is not str:
        return None
    if not _parameters(rest.get("parameters")) or not (requested is None or _known(requested, known_outputs)):
        return None
    if not _json_answer(rest.get("parameters"), requested):
        return None
    inputs = top.get("inputs")
    if type(inputs) is not simdjson.Array or not 0 < len(inputs) <= 2:
        return None
    arrays = 1 + _lists(rest)  # '[' of inputs, then of every array read below
    tensors: dict[str, tuple[list[int], np.ndarray]] = {}
    for tensor in inputs:
        fields = _fields(tensor)
        if fields is None:
            return None
        header = {key: _python(value) for key, value in fields.items() if key != "data"}
        name, parameters = header.get("name"), header.get("parameters")
        if name not in ("input", "lengths") or name in tensors or not _parameters(parameters):
            return None
        if parameters and "binary_data_size" in parameters:
            return None
        shape = _shape(header, ("FP32",), 3) if name == "input" else _shape(header, ("INT64", "INT32"), 1)
        data = fields.get("data")
        if shape is None or type(data) is not simdjson.Array or len(data) == 0:
            return None
        nesting = _arrays(data, shape)
        if nesting is None:
            return None
        numbers = _numbers(data, "i", "u", "d")
        if numbers is None or numbers.size != math.prod(shape):
            return None
        arrays += nesting + _lists(header)
        tensors[name] = (shape, numbers)
    # NOTE: as_buffer flattens any nesting; with one '[' per array accounted for, there is none but the
    # nesting checked above.
    if "input" not in tensors or _brackets(raw) != arrays:
        return None

    shape, numbers = tensors["input"]
    batch, time, features = shape
    if not 0 < batch <= limits.max_sequences or features != limits.features:
        return None
    values = _float32(numbers).reshape(shape)
    if not np.isfinite(values).all():
        return None
    lengths = [time] * batch
    if "lengths" in tensors:
        shape, numbers = tensors["lengths"]
        if shape != [batch] or numbers.dtype != np.int64:
            return None
        lengths = numbers.tolist()
    if not all(length <= time and limits.takes(length) for length in lengths):
        return None
    sequences = [values[row, :length] for row, length in enumerate(lengths)]
    outputs = None if requested is None else tuple(output["name"] for output in requested)
    return request_id, sequences, outputs


def _parameters(value: Any) -> bool:
    return value is None or type(value) is dict


def _known(requested: Any, known: Sequence[str]) -> bool:
    return type(requested) is list and all(
        type(output) is dict
        and type(output.get("name")) is str
        and output["name"] in known
        and _parameters(output.get("parameters"))
        for output in requested
    )


def _json_answer(parameters: dict[str, Any] | None, requested: list[dict[str, Any]] | None) -> bool:
    """Whether every output is answered in JSON: `binary_data_output` and each output's `binary_data`
    (binary tensor data extension) absent or false. A request for binary outputs is declined: the
    explaining path reads it, and says why when a flag is not a boolean."""
    if (parameters or {}).get("binary_data_output", False) is not False:
        return False
    return all((output.get("parameters") or {}).get("binary_data", False) is False for output in requested or ())


def _shape(header: dict[str, Any], datatypes: tuple[str, ...], rank: int) -> list[int] | None:
    shape = header.get("shape")
    if header.get("datatype") not in datatypes or type(shape) is not list or len(shape) != rank:
        return None
    return shape if all(type(d) is int and d >= 0 for d in shape) else None


def _arrays(data: simdjson.Array, shape: list[int]) -> int | None:
    """How many arrays `data` is: 1 when flat, else every level's when nested exactly as `shape`;
    None for any other nesting, left to the explaining path (ragged data, for one, NumPy holds differently)."""
    if type(data[0]) is not simdjson.Array:
        return 1  # flat, unless a later element nests: then the '[' count tells
    arrays = 0
    level: list[Any] = [data]
    for depth, size in enumerate(shape):
        if any(type(array) is not simdjson.Array or len(array) != size for array in level):
            return None
        arrays += len(level)
        if depth < len(shape) - 1:
            level = [item for array in level for item in array]
    return arrays


def _numbers(array: simdjson.Array, *types: Literal["i", "u", "d"]) -> np.ndarray | None:
    """Every number of `array` (nesting flattened) in one buffer: int64 ('i') when every number is an
    integer that fits, else float64 ('d'), as `np.asarray` holds them. Integers beyond int64 ('u') give
    None, as does anything but numbers (booleans, null, strings, objects)."""
    for of_type in types:
        try:
            buffer = array.as_buffer(of_type=of_type)
        except (TypeError, ValueError):
            continue
        return None if of_type == "u" else np.frombuffer(buffer, dtype=np.int64 if of_type == "i" else np.float64)
    return None


def _float32(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # out of float32's range: inf, declined as not finite
        return values.astype(np.float32)


def _brackets(raw: bytes) -> int:
    """How many '[' the text holds (arrays, or brackets inside strings)."""
    return int(np.count_nonzero(np.frombuffer(raw, dtype=np.uint8) == ord("[")))


def _fields(obj: Any) -> dict[str, Any] | None:
    """A simdjson object's fields (values still simdjson's); None for anything else, or when a key repeats."""
    if type(obj) is not simdjson.Object:
        return None
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):
        return None
    return {key: obj.get(key) for key in keys}


def _python(value: Any) -> Any:
    if type(value) is simdjson.Object:
        return value.as_dict()  # of duplicate keys the last, as orjson keeps
    if type(value) is simdjson.Array:
        return value.as_list()
    return value


def _lists(value: Any) -> int:
    """How many JSON arrays a parsed value holds."""
    if isinstance(value, list):
        return 1 + sum(_lists(item) for item in value if isinstance(item, (list, dict)))
    if isinstance(value, dict):
        return sum(_lists(item) for item in value.values() if isinstance(item, (list, dict)))
    return 0


_local = threading.local()


def _parse(raw: bytes) -> Any:
    """The simdjson document of `raw`, or None when it is not JSON simdjson reads. One parser per
    thread, reused: making one allocates buffers as large as the body."""
    parser = getattr(_local, "parser", None)
    for _ in range(2):
        if parser is None:
            parser = _local.parser = simdjson.Parser()
        try:
            return parser.parse(raw)
        except RuntimeError:  # a document of this parser is still referenced somewhere (or a big integer)
            parser = None
        except ValueError:
            return None
    return None
