"""Graphs users export themselves, the way the tutorials do, each with its original to compare against.

- `plain_onnx`: a tutorial BiLSTM classifier (`fc(out[:, -1, :])`) through plain `torch.onnx.export` (torch's
  default exporter: dynamic axes, weights in a `.onnx.data` file beside the graph), no lengths input.
- `scripted_packed`: a GRU classifier over `pack_padded_sequence`, `forward(x, lengths)`, through
  `torch.jit.script`.
- `packed_onnx`: a BiLSTM tagger over `pack_padded_sequence`, `forward(x, lengths)`, through
  `torch.onnx.export(..., dynamo=False)` (torch's default exporter fails on packed sequences).
- `keras_like_tagger`: the Keras tutorial tagger as tf2onnx writes it: int32 token ids named `keras_tensor_7`,
  `Embedding(mask_zero=True)` -> `Bidirectional(LSTM(return_sequences=True))` -> `Dense(softmax)` per step, output
  `output_0`. Built with `onnx.helper` from a torch module's weights (the mask becomes the LSTM's
  `sequence_lens`), so no TensorFlow is needed; the torch module is the original.

Each original answers for one sequence alone (`reference(seq)`: the output for it, unpadded).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


@dataclass(frozen=True)
class Brought:
    path: Path
    reference: Callable[[Any], np.ndarray]


class BiLSTMClassifier(nn.Module):
    def __init__(self, input_size: int = 4, hidden_size: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


class PackedGRUClassifier(nn.Module):
    def __init__(self, input_size: int = 3, hidden_size: int = 8, num_classes: int = 2) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.fc(torch.cat([h[-2], h[-1]], dim=1))


class KerasTagger(nn.Module):
    """Embedding(mask_zero) -> Bidirectional(LSTM(return_sequences)) -> Dense(softmax), on one sequence alone."""

    def __init__(self, vocabulary: int = 50, embedding: int = 6, hidden_size: int = 8, tags: int = 5) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, embedding)
        self.lstm = nn.LSTM(embedding, hidden_size, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * hidden_size, tags)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(ids))
        return torch.softmax(self.dense(out), dim=-1)


def _quiet() -> Any:
    warnings.simplefilter("ignore")


def _run(module: nn.Module, *args: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out: torch.Tensor = module(*args)
    return out[0].numpy()


def plain_onnx(folder: Path) -> Brought:
    torch.manual_seed(11)
    module = BiLSTMClassifier().eval()
    path = folder / "classifier.onnx"
    with warnings.catch_warnings():
        _quiet()
        torch.onnx.export(
            module,
            (torch.randn(2, 6, 4),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch", 1: "time"}, "logits": {0: "batch"}},
        )
    return Brought(path, lambda seq: _run(module, torch.tensor([seq], dtype=torch.float32)))


def scripted_packed(folder: Path) -> Brought:
    torch.manual_seed(12)
    module = PackedGRUClassifier().eval()
    path = folder / "gru.pt"
    with warnings.catch_warnings():
        _quiet()
        torch.jit.script(module).save(str(path))  # type: ignore[no-untyped-call]

    def reference(seq: Any) -> np.ndarray:
        return _run(module, torch.tensor([seq], dtype=torch.float32), torch.tensor([len(seq)]))

    return Brought(path, reference)


class PackedTagger(nn.Module):
    """A BiLSTM tagger over `pack_padded_sequence`, `hidden2tag(out)` on every step."""

    def __init__(self, input_size: int = 3, hidden_size: int = 8, tags: int = 4) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=True)
        self.hidden2tag = nn.Linear(2 * hidden_size, tags)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return self.hidden2tag(out)


def packed_onnx(folder: Path) -> Brought:
    """`PackedTagger` through torch's TorchScript-based exporter, `forward(x, lengths)` kept."""
    torch.manual_seed(14)
    module = PackedTagger().eval()
    path = folder / "packed.onnx"
    with warnings.catch_warnings():
        _quiet()
        torch.onnx.export(
            module,
            (torch.randn(3, 6, 3), torch.tensor([6, 2, 4])),
            str(path),
            dynamo=False,
            input_names=["x", "lengths"],
            output_names=["tags"],
            dynamic_axes={"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "tags": {0: "batch", 1: "time"}},
        )

    def reference(seq: Any) -> np.ndarray:
        return _run(module, torch.tensor([seq], dtype=torch.float32), torch.tensor([len(seq)]))

    return Brought(path, reference)


def keras_like_tagger(folder: Path, vocabulary: int = 50) -> Brought:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(13)
    module = KerasTagger(vocabulary).eval()
    hidden = module.lstm.hidden_size
    lstm = {name: value.detach().numpy() for name, value in module.lstm.named_parameters()}
    order = [0, 3, 1, 2]  # torch's gates i, f, g, o -> ONNX's i, o, f, c

    def gates(array: np.ndarray) -> np.ndarray:
        return np.concatenate([array[k * hidden : (k + 1) * hidden] for k in order])

    directions = ["", "_reverse"]
    w = np.stack([gates(lstm[f"weight_ih_l0{d}"]) for d in directions])
    r = np.stack([gates(lstm[f"weight_hh_l0{d}"]) for d in directions])
    b = np.stack([np.concatenate([gates(lstm[f"bias_ih_l0{d}"]), gates(lstm[f"bias_hh_l0{d}"])]) for d in directions])
    weights = {
        "embeddings": module.embedding.weight.detach().numpy(),
        "W": w,
        "R": r,
        "B": b,
        "dense_kernel": module.dense.weight.detach().numpy().T.copy(),
        "dense_bias": module.dense.bias.detach().numpy(),
        "zero": np.array(0, dtype=np.int32),
        "time_axis": np.array([1], dtype=np.int64),
        "merge": np.array([0, 0, -1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Cast", ["keras_tensor_7"], ["ids"], to=TensorProto.INT64),
        helper.make_node("Gather", ["embeddings", "ids"], ["embedded"]),
        helper.make_node("Equal", ["keras_tensor_7", "zero"], ["is_padding"]),
        helper.make_node("Not", ["is_padding"], ["mask"]),
        helper.make_node("Cast", ["mask"], ["mask_int"], to=TensorProto.INT32),
        helper.make_node("ReduceSum", ["mask_int", "time_axis"], ["sequence_lens"], keepdims=0),
        helper.make_node("Transpose", ["embedded"], ["time_major"], perm=[1, 0, 2]),
        helper.make_node(
            "LSTM", ["time_major", "W", "R", "B", "sequence_lens"], ["Y"], hidden_size=hidden, direction="bidirectional"
        ),
        helper.make_node("Transpose", ["Y"], ["batch_major"], perm=[2, 0, 1, 3]),
        helper.make_node("Reshape", ["batch_major", "merge"], ["merged"]),
        helper.make_node("MatMul", ["merged", "dense_kernel"], ["scores"]),
        helper.make_node("Add", ["scores", "dense_bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["output_0"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "keras_tagger",
        [helper.make_tensor_value_info("keras_tensor_7", TensorProto.INT32, ["unk__0", "unk__1"])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["unk__0", "unk__1", 5])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tf2onnx")
    onnx.checker.check_model(model)
    path = folder / "tagger.onnx"
    onnx.save(model, str(path))
    return Brought(path, lambda seq: _run(module, torch.tensor([seq], dtype=torch.int64)))
