"""Turn a model's raw outputs into answers: /predict objects and V2 output tensors, in JSON or binary."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.model_json import ModelJson

_LENGTH = struct.Struct("<I")  # a BYTES element's length in binary tensor data


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed stably in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return result


class OutputFormatter:
    def __init__(self, spec: ModelJson) -> None:
        self._task = spec.task
        self._softmax = spec.graph.output_activation == "softmax"
        self._exp = spec.graph.output_activation == "exp"
        self._labels = np.asarray(spec.labels or (), dtype=object)
        self._label_list: list[str] = list(spec.labels or ())

    def v2_output_names(self) -> tuple[str, ...]:
        if self._task == "regression":
            return ("values",)
        return ("probabilities", "label") + (("logits",) if self._softmax else ())

    def _probabilities(self, raw: np.ndarray) -> np.ndarray:
        if self._exp:  # the graph answers log-probabilities
            return np.exp(raw.astype(np.float64))
        return softmax(raw) if self._softmax else raw.astype(np.float64)

    def predict(self, raw: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """One /predict output per sequence (`raw` as the batcher returned them)."""
        if self._task == "classification":
            if len(raw) == 1 and self._softmax and raw[0].ndim == 1:
                return [self._one_softmax_row(raw[0])]
            # NOTE: Python floats, not rows of the array: orjson writes a float64 the same either way, and a
            # request's few rows cost less as one `tolist` than as NumPy views.
            probabilities = self._probabilities(raw[0][np.newaxis] if len(raw) == 1 else np.stack(raw))
            names = self._label_list
            return [
                {"label": names[index], "probabilities": row}
                for index, row in zip(probabilities.argmax(axis=-1).tolist(), probabilities.tolist(), strict=True)
            ]
        if self._task == "tagging":
            answers = []
            for steps in raw:
                probabilities = self._probabilities(steps)
                answers.append(
                    {"labels": self._labels[probabilities.argmax(axis=-1)].tolist(), "probabilities": probabilities}
                )
            return answers
        return [{"values": np.atleast_1d(values).astype(np.float64)} for values in raw]

    def _one_softmax_row(self, logits: np.ndarray) -> dict[str, Any]:
        """`predict`'s answer for one row of logits: `softmax`'s values in place, in fewer NumPy calls."""
        row = logits.astype(np.float64)
        row -= row.max()
        np.exp(row, out=row)
        row /= row.sum()
        return {"label": self._label_list[int(row.argmax())], "probabilities": row.tolist()}

    def v2(self, raw: Sequence[np.ndarray], wanted: tuple[str, ...] | None) -> list[dict[str, Any]]:
        """V2 output tensors for the whole request; per-step outputs are padded to the longest sequence."""
        names = wanted if wanted is not None else self.v2_output_names()
        tensors: dict[str, dict[str, Any]] = {}
        if self._task == "regression":
            if raw[0].ndim == 2:  # values per step [T, O]: padded with zeros to the longest sequence
                longest = max(len(steps) for steps in raw)
                values = np.zeros((len(raw), longest, raw[0].shape[-1]), dtype=np.float32)
                for row, steps in enumerate(raw):
                    values[row, : len(steps)] = steps
            else:
                values = np.stack([np.atleast_1d(v) for v in raw]).astype(np.float32)
            tensors["values"] = _tensor("values", "FP32", values)
            return [tensors[name] for name in names]

        if self._task == "classification":
            logits = np.stack(raw)
            probabilities = self._probabilities(logits)
            labels = self._labels[probabilities.argmax(axis=-1)]
        else:
            longest = max(len(steps) for steps in raw)
            logits = np.zeros((len(raw), longest, raw[0].shape[-1]), dtype=np.float32)
            probabilities = np.zeros(logits.shape, dtype=np.float64)
            labels = np.full((len(raw), longest), "", dtype=object)
            for row, steps in enumerate(raw):
                logits[row, : len(steps)] = steps
                probabilities[row, : len(steps)] = self._probabilities(steps)
                labels[row, : len(steps)] = self._labels[probabilities[row, : len(steps)].argmax(axis=-1)]
        tensors["probabilities"] = _tensor("probabilities", "FP32", probabilities.astype(np.float32))
        tensors["label"] = _tensor("label", "BYTES", labels)
        tensors["logits"] = _tensor("logits", "FP32", logits.astype(np.float32))
        return [tensors[name] for name in names]


def _tensor(name: str, datatype: str, array: np.ndarray) -> dict[str, Any]:
    data: Any = array.ravel().tolist() if datatype == "BYTES" else np.ascontiguousarray(array).ravel()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def v2_binary(tensors: list[dict[str, Any]], binary: Sequence[bool]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The binary tensor data extension: each tensor whose flag in `binary` is set (aligned with `tensors`)
    leaves its data out of the JSON for `parameters.binary_data_size`; its bytes are returned, in order, to
    follow the JSON. FP32 as little-endian float32; BYTES as each element's 4-byte little-endian length,
    then its UTF-8."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor, in_binary in zip(tensors, binary, strict=True):
        if not in_binary:
            outputs.append(tensor)
            continue
        chunk = _bytes_elements(tensor["data"]) if tensor["datatype"] == "BYTES" else _fp32_bytes(tensor["data"])
        header = {key: value for key, value in tensor.items() if key != "data"}
        outputs.append({**header, "parameters": {"binary_data_size": len(chunk)}})
        chunks.append(chunk)
    return outputs, chunks


def _fp32_bytes(data: np.ndarray) -> bytes:
    return np.ascontiguousarray(data, dtype="<f4").tobytes()


def _bytes_elements(data: list[str]) -> bytes:
    encoded = [text.encode("utf-8") for text in data]
    return b"".join(_LENGTH.pack(len(element)) + element for element in encoded)
