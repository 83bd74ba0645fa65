"""Validate request payloads once, into trusted NumPy sequences for one model.

Parsed JSON (from orjson) goes in; a list of sequences comes out, each
`[T, F]` float32 (features) or `[T]` int64 token ids (text), already checked
against the model: feature count, non-empty, max length, finite, types. Every
error names the offending index. The fast path converts whole sequences with
NumPy; element-by-element Python runs only to explain an error.

A well-formed `/predict` body of a feature model skips the parsed-JSON route:
`predict_raw` reads its numbers from the JSON text straight into NumPy
(simdjson), about a third of the time of parsing into Python floats first.
It takes only what it can prove well-formed and leaves everything else (and
every error) to `predict_request`, so both give the same answer. For V2,
`parse_v2_raw` gives `v2_request` the document with each numeric tensor's flat
`data` already an array, the same array `np.asarray` would make of it.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import simdjson  # type: ignore[import-untyped]

from service.errors import InvalidInput
from service.model_json import ModelJson
from service.tokenizer import CharTokenizer

# V2 tensor names this server takes, whatever the graph's own names are.
V2_FEATURES = "input"
V2_LENGTHS = "lengths"
V2_TEXT = "text"


def may_hold_booleans(body: bytes) -> bool:
    """NumPy turns a JSON `true` among numbers into 1.0: only bodies that may hold one get a type scan."""
    # NOTE: single-byte searches run at memory speed, a word search ~25x slower:
    # without an 'r' or an 'l' the body can hold neither word.
    return (b"r" in body or b"l" in body) and (b"true" in body or b"false" in body)


@dataclass(frozen=True)
class V2Request:
    id: str | None
    sequences: list[np.ndarray]
    outputs: tuple[str, ...] | None  # None: every output


def describe(value: object) -> str:
    """The JSON type of a parsed value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class InputValidator:
    def __init__(self, spec: ModelJson, *, max_sequences: int, fixed_length: int | None = None) -> None:
        self._spec = spec
        self._max_sequences = max_sequences
        self._max_length = spec.input.max_length if fixed_length is None else min(spec.input.max_length, fixed_length)
        self._fixed_length = fixed_length
        self._features = spec.input.features
        self._tokenizer = CharTokenizer(spec.input.tokenizer) if spec.input.tokenizer is not None else None

    @property
    def is_text(self) -> bool:
        return self._tokenizer is not None

    # -- /predict ----------------------------------------------------------

    def predict_raw(self, raw: bytes) -> list[np.ndarray] | None:
        """The sequences of a well-formed /predict body of a feature model, read from the JSON
        text into float32; None for anything else (text models, errors, unusual JSON), which
        `predict_request` then takes or explains."""
        features = self._features
        if features is None:
            return None
        document = _parse_simdjson(raw)
        if document is None:
            return None
        try:
            # NOTE: of duplicate keys orjson keeps the last, simdjson finds the first: a body with
            # two (however spelt: keys come unescaped) takes the parsed path.
            if type(document) is not simdjson.Object or list(document.keys()).count("inputs") != 1:
                return None
            inputs = document.get("inputs")
            if type(inputs) is not simdjson.Array or not 0 < len(inputs) <= self._max_sequences:
                return None
            sequences: list[np.ndarray] = []
            arrays = 1 + len(inputs)  # '[' of inputs, of each sequence, then of each step
            for seq in inputs:
                if type(seq) is not simdjson.Array:
                    return None
                steps = len(seq)
                if not 0 < steps <= self._max_length or (self._fixed_length not in (None, steps)):
                    return None
                if any(type(step) is not simdjson.Array or len(step) != features for step in seq):
                    return None
                arrays += steps
                # Every leaf a number (as_buffer refuses booleans, null, strings, objects).
                values = np.frombuffer(seq.as_buffer(of_type="d"), dtype=np.float64)
                with np.errstate(over="ignore"):  # out of float32's range: inf, refused below
                    converted = values.astype(np.float32).reshape(steps, features)
                if not np.isfinite(converted).all():
                    return None
                sequences.append(converted)
            # NOTE: each step holds `features` elements and every leaf is a number, but a step
            # could still nest an array (`[[1, 2], 3]`) that another step's empty one (`[[], 4]`)
            # balances; with exactly one '[' per array counted above, none can.
            if _brackets(raw) != arrays:
                return None
            return sequences
        except (ValueError, TypeError, RuntimeError, OverflowError):
            return None
        finally:
            inputs = seq = document = None  # NOTE: the parser is reused only once its proxies are gone

    def predict_request(self, body: Any, *, scan_types: bool) -> list[np.ndarray]:
        if not isinstance(body, dict):
            raise InvalidInput(f"body: expected a JSON object with 'inputs', got {describe(body)}")
        if "inputs" not in body:
            raise InvalidInput("inputs: field required")
        inputs = body["inputs"]
        if not isinstance(inputs, list):
            raise InvalidInput(f"inputs: expected an array of sequences, got {describe(inputs)}")
        self._check_count(len(inputs), "inputs")
        if self._tokenizer is not None:
            return [self._text(seq, f"inputs[{i}]") for i, seq in enumerate(inputs)]
        return [self._feature_sequence(seq, f"inputs[{i}]", scan_types) for i, seq in enumerate(inputs)]

    def _check_count(self, count: int, where: str) -> None:
        if count == 0:
            raise InvalidInput(f"{where}: no sequences")
        if count > self._max_sequences:
            raise InvalidInput(f"{where}: {count} sequences, at most {self._max_sequences} per request")

    def _check_length(self, length: int, where: str, unit: str) -> None:
        if length == 0:
            raise InvalidInput(f"{where}: empty sequence")
        if self._fixed_length is not None and length != self._fixed_length:
            raise InvalidInput(f"{where}: this model takes exactly {self._fixed_length} {unit}, got {length}")
        if length > self._max_length:
            raise InvalidInput(f"{where}: {length} {unit}, longer than max_length {self._max_length}")

    def _text(self, text: Any, where: str) -> np.ndarray:
        assert self._tokenizer is not None
        if not isinstance(text, str):
            raise InvalidInput(f"{where}: expected a string, got {describe(text)}")
        normalised = self._tokenizer.normalise(text)
        self._check_length(len(normalised), where, "characters")
        return self._tokenizer.encode(normalised)

    def _feature_sequence(self, seq: Any, where: str, scan_types: bool) -> np.ndarray:
        features = self._features
        if not isinstance(seq, list):
            raise InvalidInput(f"{where}: expected an array of time steps, got {describe(seq)}")
        self._check_length(len(seq), where, "steps")
        if scan_types:
            self._explain_steps(seq, where)
        else:
            fast = _steps_to_float32(seq, features)
            if fast is not None and np.isfinite(fast).all():  # else (a null is NaN here) explain below
                return fast
        try:
            array = np.asarray(seq)
        except (ValueError, TypeError, OverflowError):
            array = None
        if array is None or array.ndim != 2 or array.shape[1] != features or array.dtype.kind not in "iuf":
            self._explain_steps(seq, where)
            # Every element is a number (e.g. integers beyond int64): convert them one by one.
            array = _float64(seq, lambda i: f"{where}[{i // features}][{i % features}]")
        return self._finite(_float32(array), where)

    def _explain_steps(self, seq: list[Any], where: str) -> None:
        """Raise the precise error for the first malformed step or element of `seq`, if any."""
        features = self._features
        for t, step in enumerate(seq):
            if not isinstance(step, list):
                raise InvalidInput(f"{where}[{t}]: expected an array of {features} numbers, got {describe(step)}")
            if len(step) != features:
                raise InvalidInput(f"{where}[{t}]: expected {features} features, got {len(step)}")
            for f, x in enumerate(step):
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    raise InvalidInput(f"{where}[{t}][{f}]: expected a number, got {describe(x)}")

    @staticmethod
    def _finite(values: np.ndarray, where: str) -> np.ndarray:
        finite = np.isfinite(values)
        if not finite.all():
            index = "".join(f"[{i}]" for i in np.argwhere(~finite)[0])
            raise InvalidInput(f"{where}{index}: not a finite float32 number (NaN, Infinity or out of range)")
        return values

    # -- Open Inference Protocol V2 ----------------------------------------

    def v2_request(
        self, body: Any, *, scan_types: bool, known_outputs: Sequence[str], binary: bytes = b""
    ) -> V2Request:
        """`binary`: tensor bytes of the binary data extension, for inputs with `binary_data_size`."""
        if not isinstance(body, dict):
            raise InvalidInput(f"body: expected a JSON object, got {describe(body)}")
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidInput(f"id: expected a string, got {describe(request_id)}")
        _parameters(body, "parameters")
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise InvalidInput("inputs: expected a non-empty array of tensors")
        main_name = V2_TEXT if self.is_text else V2_FEATURES
        allowed = (main_name,) if self.is_text else (main_name, V2_LENGTHS)
        tensors: dict[str, _Tensor] = {}
        offset = 0
        for i, tensor in enumerate(inputs):
            where = f"inputs[{i}]"
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
                raise InvalidInput(f"{where}: expected a tensor object with a 'name'")
            name = tensor["name"]
            if name not in allowed:
                raise InvalidInput(
                    f"{where}: unknown input '{name}'; this model takes {' and '.join(map(repr, allowed))}"
                )
            if name in tensors:
                raise InvalidInput(f"{where}: input '{name}' given twice")
            chunk = None
            parameters = _parameters(tensor, f"{where}.parameters")
            if "binary_data_size" in parameters:
                size = parameters["binary_data_size"]
                if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary) - offset:
                    raise InvalidInput(f"{where}: binary_data_size {size!r} does not fit the binary data")
                chunk, offset = binary[offset : offset + size], offset + size
            tensors[name] = _Tensor(where, tensor, chunk)
        if offset != len(binary):
            raise InvalidInput(f"inputs: {len(binary) - offset} bytes of binary data belong to no input")
        if main_name not in tensors:
            raise InvalidInput(f"inputs: input '{main_name}' is required")

        if self.is_text:
            sequences = self._v2_text(tensors[V2_TEXT])
        else:
            sequences = self._v2_features(tensors[V2_FEATURES], tensors.get(V2_LENGTHS), scan_types)
        return V2Request(request_id, sequences, self._v2_outputs(body.get("outputs"), known_outputs))

    @staticmethod
    def _v2_outputs(requested: Any, known: Sequence[str]) -> tuple[str, ...] | None:
        if requested is None:
            return None
        if not isinstance(requested, list):
            raise InvalidInput(f"outputs: expected an array, got {describe(requested)}")
        names: list[str] = []
        for i, output in enumerate(requested):
            name = output.get("name") if isinstance(output, dict) else None
            if not isinstance(name, str) or name not in known:
                raise InvalidInput(f"outputs[{i}]: unknown output {name!r}; this model has {', '.join(known)}")
            _parameters(output, f"outputs[{i}].parameters")
            names.append(name)
        return tuple(names)

    @staticmethod
    def _header(tensor: _Tensor, datatypes: tuple[str, ...], rank: tuple[int, ...]) -> list[int]:
        where, fields = tensor.where, tensor.fields
        datatype = fields.get("datatype")
        if datatype not in datatypes:
            raise InvalidInput(f"{where}: datatype {datatype!r}, expected {' or '.join(datatypes)}")
        shape = fields.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) not in rank
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            dims = " or ".join(map(str, rank))
            raise InvalidInput(f"{where}: shape {shape!r}, expected a list of {dims} non-negative integers")
        if tensor.binary is None and "data" not in fields:
            raise InvalidInput(f"{where}: 'data' is required")
        return shape

    def _v2_numbers(self, tensor: _Tensor, shape: list[int], scan_types: bool) -> np.ndarray:
        where = tensor.where
        expected = math.prod(shape)
        if tensor.binary is not None:
            dtype = np.dtype(_BINARY_DTYPES[tensor.fields["datatype"]])
            needed = expected * dtype.itemsize
            if len(tensor.binary) != needed:
                raise InvalidInput(f"{where}: {len(tensor.binary)} bytes of binary data, shape {shape} needs {needed}")
            return np.frombuffer(tensor.binary, dtype=dtype).reshape(shape)
        data = tensor.fields["data"]
        if isinstance(data, np.ndarray):  # read from the JSON text (`parse_v2_raw`)
            if data.size != expected:
                raise InvalidInput(f"{where}.data: {data.size} elements, shape {shape} needs {expected}")
            return data.reshape(shape)
        if not isinstance(data, list):
            raise InvalidInput(f"{where}.data: expected an array, got {describe(data)}")
        if scan_types:
            _scan_numbers(data, where)
        try:
            array = np.asarray(data)
        except (ValueError, TypeError, OverflowError):
            array = None
        if array is None or array.dtype.kind not in "iuf":
            _scan_numbers(data, where)
            array = _float64(list(_flatten(data)), lambda i: f"{where}.data[{i}]")
        if array.size != expected:
            raise InvalidInput(f"{where}.data: {array.size} elements, shape {shape} needs {expected}")
        return array.reshape(shape)

    def _v2_features(self, main: _Tensor, lengths_tensor: _Tensor | None, scan_types: bool) -> list[np.ndarray]:
        where = main.where
        shape = self._header(main, ("FP32",), (3,))
        batch, time, features = shape
        self._check_count(batch, f"{where}.shape[0]")
        if features != self._features:
            raise InvalidInput(f"{where}.shape[2]: expected {self._features} features, got {features}")
        values = self._finite(_float32(self._v2_numbers(main, shape, scan_types)), where)
        if lengths_tensor is None:
            lengths = [time] * batch
        else:
            lengths = self._v2_lengths(lengths_tensor, batch, time, scan_types)
        for row, length in enumerate(lengths):
            self._check_length(length, f"{where}[{row}]", "steps")
        return [values[row, :length] for row, length in enumerate(lengths)]

    def _v2_lengths(self, tensor: _Tensor, batch: int, time: int, scan_types: bool) -> list[int]:
        where = tensor.where
        shape = self._header(tensor, ("INT64", "INT32"), (1,))
        if shape != [batch]:
            raise InvalidInput(f"{where}: shape {shape}, expected [{batch}] (one length per sequence)")
        lengths = self._v2_numbers(tensor, shape, scan_types)
        if lengths.dtype.kind not in "iu":
            raise InvalidInput(f"{where}.data: lengths must be integers")
        for row, length in enumerate(lengths.tolist()):
            if not 1 <= length <= time:
                raise InvalidInput(f"{where}[{row}]: length {length} is outside 1..{time}")
        return [int(length) for length in lengths]

    def _v2_text(self, tensor: _Tensor) -> list[np.ndarray]:
        where = tensor.where
        shape = self._header(tensor, ("BYTES",), (1, 2))
        if len(shape) == 2 and shape[1] != 1:
            raise InvalidInput(f"{where}: shape {shape}, expected [batch] or [batch, 1]")
        if tensor.binary is not None:
            texts: list[Any] = _decode_bytes(tensor.binary, where, self._max_sequences + 1)
        else:
            data = tensor.fields["data"]
            if not isinstance(data, list):
                raise InvalidInput(f"{where}.data: expected an array of strings, got {describe(data)}")
            texts = list(_flatten(data))
        self._check_count(len(texts), f"{where}.data")
        if len(texts) != shape[0]:
            raise InvalidInput(f"{where}.data: {len(texts)} strings, shape {shape} needs {shape[0]}")
        return [self._text(text, f"{where}[{i}]") for i, text in enumerate(texts)]


def _parameters(owner: dict[str, Any], where: str) -> dict[str, Any]:
    """The `parameters` object of a V2 request, tensor or requested output: absent or null is none."""
    parameters = owner.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{where}: expected an object, got {describe(parameters)}")
    return parameters


@dataclass(frozen=True)
class _Tensor:
    where: str  # "inputs[i]", for messages
    fields: dict[str, Any]
    binary: bytes | None  # its bytes under the binary data extension


_BINARY_DTYPES = {"FP32": "<f4", "INT64": "<i8", "INT32": "<i4"}


def _decode_bytes(blob: bytes, where: str, most: int) -> list[str]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then the bytes.
    Stops after `most` elements (the caller refuses that many)."""
    texts: list[str] = []
    offset = 0
    while offset < len(blob) and len(texts) < most:
        if offset + 4 > len(blob):
            raise InvalidInput(f"{where}: truncated binary BYTES element {len(texts)}")
        size = int.from_bytes(blob[offset : offset + 4], "little")
        start, offset = offset + 4, offset + 4 + size
        if offset > len(blob):
            raise InvalidInput(f"{where}: truncated binary BYTES element {len(texts)}")
        try:
            texts.append(blob[start:offset].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"{where}[{len(texts)}]: not valid UTF-8") from None
    return texts


def parse_v2_raw(raw: bytes) -> dict[str, Any] | None:
    """A V2 request body as the parsed path sees it, except that the flat `data` of each FP32,
    INT64 or INT32 input is already the array `np.asarray` makes of it (int64 when every number
    is an integer that fits, else float64); None for anything unusual (duplicate keys, NaN,
    nested or non-numeric data, huge integers), which the parsed path then takes."""
    document = _parse_simdjson(raw)
    if document is None:
        return None
    try:
        top = _fields(document) if type(document) is simdjson.Object else None
        if top is None:
            return None
        body = {key: _python(value) for key, value in top.items() if key != "inputs"}
        read = 0  # data arrays read as NumPy
        inputs = top.get("inputs")
        if type(inputs) is simdjson.Array:
            tensors: list[Any] = []
            for tensor in inputs:
                fields = _fields(tensor) if type(tensor) is simdjson.Object else None
                if fields is None:
                    if type(tensor) is simdjson.Object:
                        return None  # duplicate keys
                    tensors.append(_python(tensor))
                    continue
                converted = {key: _python(value) for key, value in fields.items() if key != "data"}
                if "data" in fields:
                    data = fields["data"]
                    numbers = _flat_numbers(data) if converted.get("datatype") in _BINARY_DTYPES else None
                    converted["data"] = _python(data) if numbers is None else numbers
                    read += numbers is not None
                tensors.append(converted)
            body["inputs"] = tensors
        elif "inputs" in top:
            body["inputs"] = _python(inputs)
        # NOTE: as_buffer flattens nested data; with one '[' per array accounted for, none was nested.
        if _brackets(raw) != _lists(body) + read:
            return None
        return body
    except (ValueError, TypeError, RuntimeError, OverflowError):
        return None
    finally:
        document = top = inputs = tensor = fields = data = None  # the parser is reused once these are gone


def _brackets(raw: bytes) -> int:
    """How many '[' the text holds (arrays, or brackets inside strings)."""
    return int(np.count_nonzero(np.frombuffer(raw, dtype=np.uint8) == ord("[")))


def _fields(obj: Any) -> dict[str, Any] | None:
    """A simdjson object's fields (values still simdjson's); None when a key repeats."""
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):
        return None
    return {key: obj.get(key) for key in keys}


def _python(value: Any) -> Any:
    if type(value) is simdjson.Object:
        return value.as_dict()
    if type(value) is simdjson.Array:
        return value.as_list()
    return value


def _flat_numbers(data: Any) -> np.ndarray | None:
    """The numbers of a simdjson array as `np.asarray` would hold them, or None (not numbers,
    empty, or integers beyond int64, whose dtype NumPy picks case by case)."""
    if type(data) is not simdjson.Array or len(data) == 0:
        return None
    try:
        return np.frombuffer(data.as_buffer(of_type="i"), dtype=np.int64)
    except (TypeError, ValueError):
        pass
    try:
        data.as_buffer(of_type="u")
        return None  # all integers, some beyond int64
    except (TypeError, ValueError):
        pass
    try:
        return np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):
        return None  # not all numbers (or nested deeper than the buffer reads): the parsed path explains


def _lists(value: Any) -> int:
    """How many JSON arrays a parsed value holds."""
    if isinstance(value, list):
        return 1 + sum(_lists(item) for item in value if isinstance(item, (list, dict)))
    if isinstance(value, dict):
        return sum(_lists(item) for item in value.values() if isinstance(item, (list, dict)))
    return 0


_simdjson = threading.local()


def _parse_simdjson(raw: bytes) -> Any:
    """The simdjson document of `raw`, or None when it is not JSON simdjson accepts. One parser
    per thread, reused (a new one per body costs about half a parse)."""
    parser = getattr(_simdjson, "parser", None)
    for _ in range(2):
        if parser is None:
            parser = _simdjson.parser = simdjson.Parser()
        try:
            return parser.parse(raw)
        except RuntimeError:  # a document of this parser is still referenced somewhere: use another
            parser = None
        except ValueError:
            return None
    return None


def _steps_to_float32(seq: list[Any], features: int) -> np.ndarray | None:
    """`[T, F]` float32 straight from a list of `T` lists of `F` numbers, in one pass without
    NumPy's nested-sequence discovery; None when `seq` is anything else (the caller explains).
    Booleans would pass as numbers: bodies that may hold one are scanned before."""
    if any(type(step) is not list or len(step) != features for step in seq):
        return None
    try:
        with np.errstate(over="ignore"):  # out-of-range values become inf, refused as not finite
            flat = np.fromiter(itertools.chain.from_iterable(seq), dtype=np.float32, count=len(seq) * features)
    except (TypeError, ValueError, OverflowError):
        return None
    return flat.reshape(len(seq), features)


def _float32(array: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # out-of-range values become inf, refused as not finite
        return array.astype(np.float32)


def _float64(numbers: list[Any], where: Callable[[int], str]) -> np.ndarray:
    """float64 from numbers already checked to be numbers; an integer beyond any float (a JSON
    integer of 400 digits) is a 422 naming its flat index, not an OverflowError."""
    try:
        return np.array(numbers, dtype=np.float64)
    except OverflowError:
        pass
    for i, value in enumerate(_flatten(numbers)):
        try:
            float(value)
        except OverflowError:
            raise InvalidInput(f"{where(i)}: not a finite float32 number (out of range)") from None
    raise AssertionError("no element overflowed")  # pragma: no cover


def _flatten(data: list[Any]) -> Iterator[Any]:
    for value in data:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def _scan_numbers(data: list[Any], where: str) -> None:
    for i, value in enumerate(_flatten(data)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"{where}.data[{i}]: expected a number, got {describe(value)}")
