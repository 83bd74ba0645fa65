"""Validate request payloads once, into trusted NumPy sequences for one model.

`InputValidator.predict` and `InputValidator.v2` take a request body and return its sequences, each
`[T, F]` float32 (features) or `[T]` int64 token ids (text, tokens), already checked against the model:
feature count, non-empty, max length, finite, token ids within the vocabulary, types. Each first offers
the body to the fast reader (`service.fast_read`), which takes only what it can prove well-formed and
valid (feature models only); everything else is read here, from the parsed JSON. This module is the one
place that decides what is valid and says why not: every error names the offending index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service import fast_read
from service.errors import InvalidInput
from service.model_json import ModelJson
from service.tokenizer import CharTokenizer

# V2 tensor names this server takes, whatever the graph's own names are.
V2_FEATURES = "input"
V2_LENGTHS = "lengths"
V2_TEXT = "text"


class RequestBody(Protocol):
    """A request body as the HTTP edge reads it (`service.api.body.Body`)."""

    @property
    def raw(self) -> bytes:
        """The JSON text."""

    @property
    def binary(self) -> bytes:
        """Tensor bytes of the V2 binary data extension, after the JSON; empty without."""

    @property
    def document(self) -> Any:
        """The parsed JSON; raises `InvalidJSON`."""


@dataclass(frozen=True)
class V2Request:
    id: str | None
    sequences: list[np.ndarray]
    outputs: tuple[str, ...] | None  # None: every output
    binary_outputs: tuple[bool, ...] = ()
    """Binary tensor data extension: per output answered (`outputs`, else every output, in order), whether
    its data goes in binary after the JSON; empty when none does."""


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
        self._vocabulary_size = spec.input.vocabulary_size if spec.input.kind == "tokens" else None
        # NOTE: the fast reader knows feature models only; token ids always take the explaining path.
        self._fast = (
            fast_read.Limits(self._features, self._max_length, fixed_length, max_sequences)
            if spec.input.kind == "features" and self._features is not None
            else None
        )

    @property
    def is_text(self) -> bool:
        return self._tokenizer is not None

    # -- /predict ----------------------------------------------------------

    def predict(self, body: RequestBody) -> list[np.ndarray]:
        """The sequences of a /predict body `{"inputs": [seq, ...]}`."""
        if self._fast is not None:
            sequences = fast_read.read_predict(body.raw, self._fast)
            if sequences is not None:
                return sequences
        return self.predict_document(body.document)

    def predict_document(self, body: Any) -> list[np.ndarray]:
        """The explaining path of `predict`: the parsed JSON, checked element by element."""
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
        if self._vocabulary_size is not None:
            return [self._token_sequence(seq, f"inputs[{i}]") for i, seq in enumerate(inputs)]
        return [self._feature_sequence(seq, f"inputs[{i}]") for i, seq in enumerate(inputs)]

    def sequence(self, value: Any, where: str) -> np.ndarray:
        """One sequence from parsed JSON, checked as one element of /predict's `inputs` (a stream chunk's steps)."""
        if self._tokenizer is not None:
            return self._text(value, where)
        return self._feature_sequence(value, where)

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
        self._check_length(len(normalised), where, f"{self._tokenizer.unit}s")
        if self._tokenizer.rejects_unknown:
            i = self._tokenizer.first_unknown(normalised)
            if i is not None:
                raise InvalidInput(
                    f"{where}[{i}]: {self._tokenizer.unit} {normalised[i]!r} is not in the model's vocabulary"
                )
        return self._tokenizer.encode(normalised)

    def _token_sequence(self, seq: Any, where: str) -> np.ndarray:
        if not isinstance(seq, list):
            raise InvalidInput(f"{where}: expected an array of token ids, got {describe(seq)}")
        self._check_length(len(seq), where, "tokens")
        t = next((t for t, value in enumerate(seq) if type(value) is not int), None)
        if t is not None:
            raise InvalidInput(f"{where}[{t}]: expected an integer token id, got {_shown(seq[t])}")
        try:
            ids = np.array(seq, dtype=np.int64)
        except OverflowError:  # beyond int64: out of any vocabulary
            t = next(t for t, value in enumerate(seq) if not -(1 << 63) <= value < 1 << 63)
            raise InvalidInput(f"{where}[{t}]: token id {seq[t]} is outside {self._id_range()}") from None
        return self._in_vocabulary(ids, where)

    def _id_range(self) -> str:
        assert self._vocabulary_size is not None
        return f"0..{self._vocabulary_size - 1} (vocabulary_size {self._vocabulary_size})"

    def _in_vocabulary(self, ids: np.ndarray, where: str) -> np.ndarray:
        """`ids` (any shape), refused naming the first one outside the vocabulary."""
        assert self._vocabulary_size is not None
        outside = (ids < 0) | (ids >= self._vocabulary_size)
        if outside.any():
            at = np.argwhere(outside)[0]
            index = "".join(f"[{i}]" for i in at)
            raise InvalidInput(f"{where}{index}: token id {ids[tuple(at)]} is outside {self._id_range()}")
        return ids

    def _feature_sequence(self, seq: Any, where: str) -> np.ndarray:
        features = self._features
        assert features is not None
        if not isinstance(seq, list):
            raise InvalidInput(f"{where}: expected an array of time steps, got {describe(seq)}")
        self._check_length(len(seq), where, "steps")
        for t, step in enumerate(seq):
            if not isinstance(step, list):
                raise InvalidInput(f"{where}[{t}]: expected an array of {features} numbers, got {describe(step)}")
            if len(step) != features:
                raise InvalidInput(f"{where}[{t}]: expected {features} features, got {len(step)}")
            f = _first_non_number(step)
            if f is not None:
                raise InvalidInput(f"{where}[{t}][{f}]: expected a number, got {describe(step[f])}")
        values = _float64(seq, lambda i: f"{where}[{i // features}][{i % features}]")
        return self._finite(_float32(values), where)

    @staticmethod
    def _finite(values: np.ndarray, where: str) -> np.ndarray:
        finite = np.isfinite(values)
        if not finite.all():
            index = "".join(f"[{i}]" for i in np.argwhere(~finite)[0])
            raise InvalidInput(f"{where}{index}: not a finite float32 number (NaN, Infinity or out of range)")
        return values

    # -- Open Inference Protocol V2 ----------------------------------------

    def v2(self, body: RequestBody, *, known_outputs: Sequence[str]) -> V2Request:
        """An Open Inference Protocol infer request; `known_outputs`: the names it may ask for."""
        # The binary data extension's tensors follow the JSON: the fast reader reads JSON text only.
        if self._fast is not None and not body.binary:
            fields = fast_read.read_v2(body.raw, self._fast, known_outputs)
            if fields is not None:
                return V2Request(*fields)
        return self.v2_document(body.document, known_outputs=known_outputs, binary=body.binary)

    def v2_document(self, body: Any, *, known_outputs: Sequence[str], binary: bytes = b"") -> V2Request:
        """The explaining path of `v2`: the parsed JSON, and `binary`, the tensor bytes of the binary data
        extension for inputs with `binary_data_size`."""
        if not isinstance(body, dict):
            raise InvalidInput(f"body: expected a JSON object, got {describe(body)}")
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidInput(f"id: expected a string, got {describe(request_id)}")
        binary_default = _flag(_parameters(body, "parameters"), "binary_data_output", "parameters", default=False)
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
        elif self._vocabulary_size is not None:
            sequences = self._v2_tokens(tensors[V2_FEATURES], tensors.get(V2_LENGTHS))
        else:
            sequences = self._v2_features(tensors[V2_FEATURES], tensors.get(V2_LENGTHS))
        outputs, in_binary = self._v2_outputs(body.get("outputs"), known_outputs, binary_default)
        return V2Request(request_id, sequences, outputs, in_binary if any(in_binary) else ())

    @staticmethod
    def _v2_outputs(
        requested: Any, known: Sequence[str], binary_default: bool
    ) -> tuple[tuple[str, ...] | None, tuple[bool, ...]]:
        """The names of the outputs asked for (None: every output), and whether each is answered in binary:
        its `binary_data`, else the request's `binary_data_output` (`binary_default`)."""
        if requested is None:
            return None, (binary_default,) * len(known)
        if not isinstance(requested, list):
            raise InvalidInput(f"outputs: expected an array, got {describe(requested)}")
        names: list[str] = []
        binary: list[bool] = []
        for i, output in enumerate(requested):
            name = output.get("name") if isinstance(output, dict) else None
            if not isinstance(name, str) or name not in known:
                raise InvalidInput(f"outputs[{i}]: unknown output {name!r}; this model has {', '.join(known)}")
            where = f"outputs[{i}].parameters"
            binary.append(_flag(_parameters(output, where), "binary_data", where, default=binary_default))
            names.append(name)
        return tuple(names), tuple(binary)

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

    def _v2_numbers(self, tensor: _Tensor, shape: list[int]) -> np.ndarray:
        where = tensor.where
        expected = math.prod(shape)
        if tensor.binary is not None:
            dtype = np.dtype(_BINARY_DTYPES[tensor.fields["datatype"]])
            needed = expected * dtype.itemsize
            if len(tensor.binary) != needed:
                raise InvalidInput(f"{where}: {len(tensor.binary)} bytes of binary data, shape {shape} needs {needed}")
            return np.frombuffer(tensor.binary, dtype=dtype).reshape(shape)
        data = tensor.fields["data"]
        if not isinstance(data, list):
            raise InvalidInput(f"{where}.data: expected an array, got {describe(data)}")
        numbers, i = data, _first_non_number(data)
        if i is not None and list in map(type, data):  # nested: the elements in row-major order
            numbers = _flatten(data)
            i = _first_non_number(numbers)
        if i is not None:
            raise InvalidInput(f"{where}.data[{i}]: expected a number, got {describe(numbers[i])}")
        try:
            array = np.asarray(data)  # the dtype NumPy picks: int64 when every number is an integer that fits
        except (ValueError, TypeError, OverflowError):  # ragged nesting
            array = None
        if array is None or array.dtype.kind not in "iuf":  # or integers beyond 64 bits
            array = _float64(numbers, lambda i: f"{where}.data[{i}]")
        if array.size != expected:
            raise InvalidInput(f"{where}.data: {array.size} elements, shape {shape} needs {expected}")
        return array.reshape(shape)

    def _v2_features(self, main: _Tensor, lengths_tensor: _Tensor | None) -> list[np.ndarray]:
        where = main.where
        shape = self._header(main, ("FP32",), (3,))
        batch, time, features = shape
        self._check_count(batch, f"{where}.shape[0]")
        if features != self._features:
            raise InvalidInput(f"{where}.shape[2]: expected {self._features} features, got {features}")
        values = self._finite(_float32(self._v2_numbers(main, shape)), where)
        lengths = [time] * batch if lengths_tensor is None else self._v2_lengths(lengths_tensor, batch, time)
        for row, length in enumerate(lengths):
            self._check_length(length, f"{where}[{row}]", "steps")
        return [values[row, :length] for row, length in enumerate(lengths)]

    def _v2_tokens(self, main: _Tensor, lengths_tensor: _Tensor | None) -> list[np.ndarray]:
        where = main.where
        shape = self._header(main, ("INT64", "INT32"), (2,))
        batch, time = shape
        self._check_count(batch, f"{where}.shape[0]")
        ids = self._v2_numbers(main, shape)
        if ids.dtype.kind not in "iu":
            raise InvalidInput(f"{where}.data: token ids must be integers")
        lengths = [time] * batch if lengths_tensor is None else self._v2_lengths(lengths_tensor, batch, time)
        sequences = []
        for row, length in enumerate(lengths):
            self._check_length(length, f"{where}[{row}]", "tokens")
            sequences.append(self._in_vocabulary(ids[row, :length].astype(np.int64), f"{where}[{row}]"))
        return sequences

    def _v2_lengths(self, tensor: _Tensor, batch: int, time: int) -> list[int]:
        where = tensor.where
        shape = self._header(tensor, ("INT64", "INT32"), (1,))
        if shape != [batch]:
            raise InvalidInput(f"{where}: shape {shape}, expected [{batch}] (one length per sequence)")
        lengths = self._v2_numbers(tensor, shape)
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
            texts = _flatten(data)
        self._check_count(len(texts), f"{where}.data")
        if len(texts) != shape[0]:
            raise InvalidInput(f"{where}.data: {len(texts)} strings, shape {shape} needs {shape[0]}")
        return [self._text(text, f"{where}[{i}]") for i, text in enumerate(texts)]


def _shown(value: Any) -> str:
    """A value that is no integer token id, for messages: a number as written, else its JSON type."""
    return repr(value) if type(value) is float else describe(value)


def _parameters(owner: dict[str, Any], where: str) -> dict[str, Any]:
    """The `parameters` object of a V2 request, tensor or requested output: absent or null is none."""
    parameters = owner.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{where}: expected an object, got {describe(parameters)}")
    return parameters


def _flag(parameters: dict[str, Any], name: str, where: str, *, default: bool) -> bool:
    """A boolean parameter of the binary tensor data extension; `default` when absent."""
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{name}: expected a boolean, got {describe(value)}")
    return value


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


def _float32(array: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # out-of-range values become inf, refused as not finite
        return array.astype(np.float32)


def _float64(numbers: list[Any], where: Callable[[int], str]) -> np.ndarray:
    """float64 from numbers already checked to be numbers (nested lists, or flat); an integer beyond
    any float (a JSON integer of 400 digits) is a 422 naming its flat index, not an OverflowError."""
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


def _flatten(data: list[Any]) -> list[Any]:
    """The elements of arrays nested to any depth, in row-major order."""
    while list in map(type, data):
        data = [item for value in data for item in (value if type(value) is list else (value,))]
    return data


_NUMBERS = frozenset((int, float))  # exact types: a parsed `true` is a bool, which isinstance counts as an int


def _first_non_number(values: list[Any]) -> int | None:
    """The index of the first element of `values` that is not a number, if any."""
    if _NUMBERS.issuperset(map(type, values)):
        return None
    return next(i for i, value in enumerate(values) if type(value) not in _NUMBERS)
