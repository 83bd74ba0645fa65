"""Stream graphs for tests, built the way model.json's `streaming` contract describes them, from the weights
of a user's own module: `(input [B, T, ...], lengths [B], state_in [B, S]) -> (output, state_out [B, S])`.

`write_stream_entry` writes a repository entry: the whole-sequence graph (`model.onnx`), the stream graph
(`stream.onnx` and `stream.pt`) and a model.json with its `streaming` section. Each user module reads its
answer the way tutorials do (`fc(out[:, -1])`, masked mean, a per-step head) and is the reference: run on
one whole sequence alone.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

Readout = Literal["last", "mean", "max", "per_step"]


class UserModel(nn.Module):
    """A user's module: optional embedding, nn.LSTM or nn.GRU (batch_first), a head read the usual way."""

    def __init__(
        self, cell: str, inputs: int, hidden: int, layers: int, outputs: int, readout: Readout, vocabulary: int = 0
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, inputs) if vocabulary else None
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(inputs, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, outputs)
        self.readout = readout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # one unpadded sequence, [1, T, F] or [1, T]
        if self.embedding is not None:
            x = self.embedding(x)
        out, _ = self.rnn(x)
        if self.readout == "last":
            return self.fc(out[:, -1])
        if self.readout == "mean":
            return self.fc(out.mean(dim=1))
        if self.readout == "max":
            return self.fc(out.max(dim=1).values)
        return self.fc(out)


class StreamGraph(nn.Module):
    """The stream graph for a `UserModel`'s weights: packed (exact under padding), its recurrent state
    and the pooling's running values in and out. State: h per layer, c per layer (LSTM), then for mean
    pooling the running sum and count, for max the running max and count. All zeros: a new stream."""

    def __init__(self, user: UserModel) -> None:
        super().__init__()
        self.embedding = user.embedding
        self.rnn = user.rnn
        self.fc = user.fc
        self.readout = user.readout
        self.layers = user.rnn.num_layers
        self.hidden = user.rnn.hidden_size
        self.lstm = isinstance(user.rnn, nn.LSTM)

    @property
    def state_size(self) -> int:
        size = self.layers * self.hidden * (2 if self.lstm else 1)
        return size + (self.hidden + 1 if self.readout in ("mean", "max") else 0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.embedding is not None:
            x = self.embedding(x)
        rows, layers, hidden = x.shape[0], self.layers, self.hidden
        recurrent = layers * hidden
        h0 = state[:, :recurrent].reshape(rows, layers, hidden).transpose(0, 1).contiguous()
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        if self.lstm:
            c0 = state[:, recurrent : 2 * recurrent].reshape(rows, layers, hidden).transpose(0, 1).contiguous()
            out_packed, (h, c) = self.rnn(packed, (h0, c0))
            carried = [h.transpose(0, 1).reshape(rows, recurrent), c.transpose(0, 1).reshape(rows, recurrent)]
            used = 2 * recurrent
        else:
            out_packed, h = self.rnn(packed, h0)
            carried = [h.transpose(0, 1).reshape(rows, recurrent)]
            used = recurrent
        if self.readout == "last":
            return self.fc(carried[0][:, -hidden:]), torch.cat(carried, dim=1)
        out, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=x.shape[1])
        mask = (torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(2)  # [B, T, 1]
        if self.readout == "per_step":
            return self.fc(out) * mask, torch.cat(carried, dim=1)
        pooled, count = state[:, used : used + hidden], state[:, used + hidden :]
        new_count = count + lengths.unsqueeze(1).to(state.dtype)
        if self.readout == "mean":
            pooled = pooled + (out * mask).sum(dim=1)
            value = pooled / new_count
        else:
            chunk_max = out.masked_fill(~mask, float("-inf")).max(dim=1).values
            pooled = torch.where(count > 0, torch.maximum(pooled, chunk_max), chunk_max)
            value = pooled
        return self.fc(value), torch.cat([*carried, pooled, new_count], dim=1)


class WholeGraph(nn.Module):
    """The whole-sequence graph for the same weights: the stream graph from a zero state."""

    def __init__(self, stream: StreamGraph) -> None:
        super().__init__()
        self.stream = stream

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        state = torch.zeros(x.shape[0], self.stream.state_size)
        return self.stream(x, lengths, state)[0]


@dataclass(frozen=True)
class StreamEntry:
    """A streamable model as the HTTP checks see it (tests/service/streams/client.py); build one for any
    repository's model to check it the same way."""

    name: str
    path: Path
    features: int | None  # None: text (token ids)
    vocabulary: int  # text: random chunks use its first `vocabulary - 2` letters from 'a'
    reference: Any  # one whole sequence (steps, or token ids) -> the user's module's raw output [O] or [T, O]
    per_step: bool
    task: str
    encode: Callable[[str], np.ndarray] | None = None  # text -> the reference's token ids; None: 'a' is id 2, ...


def write_stream_entry(
    root: Path,
    name: str,
    *,
    cell: str = "lstm",
    readout: Readout = "last",
    task: str = "regression",
    inputs: int = 3,
    hidden: int = 8,
    layers: int = 1,
    outputs: int = 2,
    vocabulary: int = 0,
    max_length: int = 64,
    formats: tuple[str, ...] = ("onnx", "torchscript"),
    seed: int = 0,
) -> StreamEntry:
    """Write `<root>/<name>/1/` for a fresh `UserModel` and return it with its reference."""
    warnings.filterwarnings("ignore")
    torch.manual_seed(seed)
    user = UserModel(cell, inputs, hidden, layers, outputs, readout, vocabulary).eval()
    stream = StreamGraph(user).eval()
    folder = root / name / "1"
    folder.mkdir(parents=True)
    text = vocabulary > 0
    x = torch.randint(2, vocabulary, (3, 7)) if text else torch.randn(3, 7, inputs)
    lengths = torch.tensor([7, 3, 5])
    state = torch.zeros(3, stream.state_size)
    dynamic = {"input": {0: "batch", 1: "time"}, "lengths": {0: "batch"}}
    per_step = readout == "per_step"
    with torch.no_grad():
        torch.onnx.export(
            WholeGraph(stream),
            (x, lengths),
            str(folder / "model.onnx"),
            dynamo=False,
            input_names=["input", "lengths"],
            output_names=["output"],
            dynamic_axes={**dynamic, "output": {0: "batch", 1: "time"} if per_step else {0: "batch"}},
        )
        stream_formats: dict[str, str] = {}
        if "onnx" in formats:
            torch.onnx.export(
                stream,
                (x, lengths, state),
                str(folder / "stream.onnx"),
                dynamo=False,
                input_names=["input", "lengths", "state_in"],
                output_names=["output", "state_out"],
                dynamic_axes={
                    **dynamic,
                    "state_in": {0: "batch"},
                    "state_out": {0: "batch"},
                    "output": {0: "batch", 1: "time"} if per_step else {0: "batch"},
                },
            )
            stream_formats["onnx"] = "stream.onnx"
        if "torchscript" in formats:
            torch.jit.trace(stream, (x, lengths, state), check_trace=False).save(str(folder / "stream.pt"))
            stream_formats["torchscript"] = "stream.pt"
    labels = [f"class{i}" for i in range(outputs)] if task != "regression" else None
    meta: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "version": 1,
        "task": task,
        "input": {
            "kind": "text",
            "max_length": max_length,
            "tokenizer": {
                "type": "char",
                "vocabulary": ["<pad>", "<unk>", *(chr(ord("a") + i) for i in range(vocabulary - 2))],
                "padding_id": 0,
                "unknown_id": 1,
            },
        }
        if text
        else {"kind": "features", "features": inputs, "max_length": max_length},
        "labels": labels,
        "output_names": [f"y{i}" for i in range(outputs)] if task == "regression" else None,
        "graph": {
            "input": "input",
            "lengths": "lengths",
            "output": "output",
            "input_dtype": "int64" if text else "float32",
            "output_activation": "none",
        },
        "padding": "exact",
        "formats": {"onnx": "model.onnx"},
        "streaming": {"formats": stream_formats, "state_size": stream.state_size, "per_step": per_step},
        "architecture": {"cell": cell, "bidirectional": False, "readout": readout},
    }
    (folder / "model.json").write_text(json.dumps(meta, indent=2))

    def reference(sequence: Any) -> np.ndarray:
        with torch.no_grad():
            dtype = torch.int64 if text else torch.float32
            result: np.ndarray = user(torch.tensor(np.asarray(sequence)[None], dtype=dtype))[0].numpy()
            return result

    return StreamEntry(name, folder, None if text else inputs, vocabulary, reference, per_step, task)
