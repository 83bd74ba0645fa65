"""Shared fixtures: the test model repository, built from scratch once per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

Reference = Callable[[Any], np.ndarray]
"""One request input (a list of steps, or a string) -> the graph's raw output for it alone."""


@dataclass(frozen=True)
class BuiltRepository:
    path: Path
    references: dict[str, Reference]


@pytest.fixture(scope="session")
def test_repository(tmp_path_factory: pytest.TempPathFactory) -> BuiltRepository:
    root = tmp_path_factory.mktemp("repository")
    return BuiltRepository(root, build_test_repository(root))


VOCABULARY = ["<pad>", "<unk>", *"abcdefghijklmnopqrstuvwxyz", " ", "'"]


def build_test_repository(root: Path, only: str | None = None) -> dict[str, Reference]:
    """Write every test model under `root` and return, per model, its reference.

    The models are small random-weight modules written the way the tutorials
    write them (the reference: run on one sequence, unpadded) and exported
    length-aware (exact under padding) with `torch.onnx.export(dynamo=True)`,
    plus one equal-length-only graph without a lengths input (family F10).
    NOTE: the one place that builds models; to be replaced by `models/`.

    NOTE: torch 2.13's ONNX exporter specialises the time axis of every
    RNN export after the first in a process (its LSTM/GRU decomposition adds
    a guard), so each model is exported in a child process (`only=name`);
    this process loads the saved weights to build the references.
    """
    import torch
    from torch import nn

    warnings.filterwarnings("ignore")
    # NOTE: one thread: OpenMP workers spinning beside the servers under test
    # (on a small machine) made each reference call take up to a second.
    torch.set_num_threads(1)
    torch.manual_seed(1234 if only is None else sum(map(ord, only)))

    def reverse_within_length(lengths: torch.Tensor, time: int) -> torch.Tensor:
        t = torch.arange(time).unsqueeze(0)
        length = lengths.unsqueeze(1)
        return torch.where(t < length, length - 1 - t, t)

    def take_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, 1, index.unsqueeze(2).expand(x.shape[0], x.shape[1], x.shape[2]))

    def last_valid(out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        index = (lengths - 1).view(-1, 1, 1).expand(out.shape[0], 1, out.shape[2])
        return torch.gather(out, 1, index).squeeze(1)

    class ExactBiLSTM(nn.Module):
        """A bidirectional nn.LSTM's weights, run exactly on a padded batch."""

        def __init__(self, original: nn.LSTM) -> None:
            super().__init__()
            self.fwd = nn.LSTM(original.input_size, original.hidden_size, batch_first=True)
            self.bwd = nn.LSTM(original.input_size, original.hidden_size, batch_first=True)
            with torch.no_grad():
                for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                    getattr(self.fwd, name).copy_(getattr(original, name))
                    getattr(self.bwd, name).copy_(getattr(original, name + "_reverse"))

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            index = reverse_within_length(lengths, x.shape[1])
            forward, _ = self.fwd(x)
            backward, _ = self.bwd(take_steps(x, index))
            return torch.cat([forward, take_steps(backward, index)], 2)

    class BiLSTMClassifier(nn.Module):  # F1
        def __init__(self, features: int, hidden: int, classes: int) -> None:
            super().__init__()
            self.original = nn.LSTM(features, hidden, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(2 * hidden, classes)
            self.exact = ExactBiLSTM(self.original)

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return self.fc(last_valid(self.exact(x, lengths), lengths))

        def reference(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.original(x)[0][:, -1])[0]

    class BiLSTMTagger(BiLSTMClassifier):  # F5
        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return self.fc(self.exact(x, lengths))

        def reference(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.original(x)[0])[0]

    class LSTMRegressor(nn.Module):  # F2: unidirectional, so padding after the end is harmless
        def __init__(self, features: int, hidden: int, outputs: int) -> None:
            super().__init__()
            self.lstm = nn.LSTM(features, hidden, batch_first=True)
            self.fc = nn.Linear(hidden, outputs)

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return self.fc(last_valid(self.lstm(x)[0], lengths))

        def reference(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.lstm(x)[0][:, -1])[0]

    class GRUTextClassifier(nn.Module):  # F3/F4: embedding + GRU on token ids
        def __init__(self, vocabulary: int, embedding: int, hidden: int, classes: int) -> None:
            super().__init__()
            self.embedding = nn.Embedding(vocabulary, embedding, padding_idx=0)
            self.gru = nn.GRU(embedding, hidden, batch_first=True)
            self.fc = nn.Linear(hidden, classes)

        def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return self.fc(last_valid(self.gru(self.embedding(tokens))[0], lengths))

        def reference(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.fc(self.gru(self.embedding(tokens))[0][:, -1])[0]

    class PlainGRU(nn.Module):  # F10: reads out[:, -1], so only equal lengths batch exactly
        def __init__(self, features: int, hidden: int, classes: int) -> None:
            super().__init__()
            self.gru = nn.GRU(features, hidden, batch_first=True)
            self.fc = nn.Linear(hidden, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.gru(x)[0][:, -1])

        def reference(self, x: torch.Tensor) -> torch.Tensor:
            return self(x)[0]

    def export(module: nn.Module, name: str, example: tuple[torch.Tensor, ...], *, torchscript: bool = False) -> None:
        directory = root / name / "1"
        directory.mkdir(parents=True)
        batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
        with_lengths = len(example) == 2
        dynamic: dict[str, Any] = {"x": {0: batch, 1: time}}
        if with_lengths:
            dynamic = {"x": {0: batch, 1: time}, "lengths": {0: batch}}

        class Graph(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.module = module

            def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
                return self.module(x, lengths) if lengths is not None else self.module(x)

        graph = Graph().eval()
        torch.onnx.export(
            graph,
            example,
            str(directory / "model.onnx"),
            dynamo=True,
            external_data=False,
            input_names=["input", "lengths"][: len(example)],
            output_names=["logits"],
            dynamic_shapes=dynamic,
            verbose=False,
        )
        if torchscript:
            torch.jit.trace(graph, example).save(str(directory / "model.pt"))

    def write_spec(name: str, graph: dict[str, Any] | None = None, **fields: Any) -> None:
        spec: dict[str, Any] = {
            "schema_version": 1,
            "name": name,
            "version": 1,
            "description": f"test model {name}",
            "graph": {
                "input": "input",
                "lengths": "lengths",
                "output": "logits",
                "input_dtype": "float32",
                "output_activation": "softmax",
            },
            "padding": "exact",
            "labels": None,
            "output_names": None,
            "formats": {"onnx": "model.onnx"},
        }
        spec.update(fields)
        spec["graph"].update(graph or {})
        (root / name / "1" / "model.json").write_text(json.dumps(spec, indent=2))

    def features_input(features: int, max_length: int) -> dict[str, Any]:
        return {"kind": "features", "features": features, "max_length": max_length, "tokenizer": None}

    def on_features(module: nn.Module) -> Reference:
        def run(seq: Any) -> np.ndarray:
            with torch.no_grad():
                return module.reference(torch.tensor([seq], dtype=torch.float32)).numpy()

        return run

    def on_text(module: nn.Module) -> Reference:
        ids = {c: i for i, c in enumerate(VOCABULARY) if len(c) == 1}

        def run(text: str) -> np.ndarray:
            tokens = torch.tensor([[ids.get(c, 1) for c in text.lower()]], dtype=torch.int64)
            with torch.no_grad():
                return module.reference(tokens).numpy()

        return run

    def spec_fields(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(graph overrides, other model.json fields) of each test model."""
        if name == "feat":
            return {}, {
                "task": "classification",
                "input": features_input(5, 40),
                "labels": ["neg", "neu", "pos"],
                "formats": {"onnx": "model.onnx", "torchscript": "model.pt"},
            }
        if name == "tagger":
            return {}, {"task": "tagging", "input": features_input(4, 30), "labels": ["B", "I", "O", "X"]}
        if name == "regress":
            return {"output_activation": "none"}, {
                "task": "regression",
                "input": features_input(3, 30),
                "output_names": ["level", "trend"],
            }
        if name == "text":
            tokenizer = {"type": "char", "lowercase": True, "vocabulary": VOCABULARY, "padding_id": 0, "unknown_id": 1}
            return {"input_dtype": "int64"}, {
                "task": "classification",
                "input": {"kind": "text", "features": None, "max_length": 32, "tokenizer": tokenizer},
                "labels": ["female", "male"],
            }
        return {"lengths": None}, {
            "task": "classification",
            "input": features_input(3, 20),
            "labels": ["no", "yes"],
            "padding": "equal-length",
        }

    lengths = torch.tensor([7, 3, 5])
    models: dict[str, tuple[Callable[[], nn.Module], tuple[torch.Tensor, ...], Callable[[nn.Module], Reference]]] = {
        "feat": (lambda: BiLSTMClassifier(5, 8, 3), (torch.randn(3, 7, 5), lengths), on_features),
        "tagger": (lambda: BiLSTMTagger(4, 8, 4), (torch.randn(3, 7, 4), lengths), on_features),
        "regress": (lambda: LSTMRegressor(3, 8, 2), (torch.randn(3, 7, 3), lengths), on_features),
        "text": (
            lambda: GRUTextClassifier(len(VOCABULARY), 6, 8, 2),
            (torch.randint(2, len(VOCABULARY), (3, 7)), lengths),
            on_text,
        ),
        "equal": (lambda: PlainGRU(3, 8, 2), (torch.randn(3, 7, 3),), on_features),
    }
    weights = root.parent / f"{root.name}-weights"

    if only is not None:  # in a child process: export one model
        make, example, _ = models[only]
        module = make().eval()
        export(module, only, example, torchscript=only == "feat")
        graph, fields = spec_fields(only)
        write_spec(only, graph, **fields)
        weights.mkdir(exist_ok=True)
        torch.save(module.state_dict(), weights / f"{only}.pt")
        return {}

    children: list[subprocess.Popen[bytes]] = []
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    script = "import sys, pathlib; from tests.service.conftest import build_test_repository as build; "
    script += "build(pathlib.Path(sys.argv[1]), sys.argv[2])"
    try:
        for name in models:
            if len(children) == 2:  # two cores
                _wait_for_export(children.pop(0))
            command = [sys.executable, "-c", script, str(root), name]
            children.append(
                subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            )
        for child in children:
            _wait_for_export(child)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    references: dict[str, Reference] = {}
    for name, (make, _, wrap) in models.items():
        module = make().eval()
        module.load_state_dict(torch.load(weights / f"{name}.pt", weights_only=True))
        references[name] = wrap(module)

    # A second version of `feat` (same graph): versions are served side by side.
    shutil.copytree(root / "feat" / "1", root / "feat" / "2")
    spec = json.loads((root / "feat" / "2" / "model.json").read_text())
    spec["version"] = 2
    (root / "feat" / "2" / "model.json").write_text(json.dumps(spec))
    return references


def _wait_for_export(child: subprocess.Popen[bytes]) -> None:
    output, _ = child.communicate(timeout=300)
    if child.returncode != 0:
        raise RuntimeError(f"exporting a test model failed:\n{output.decode(errors='replace')[-4000:]}")
