"""Shared fixtures: the test model repository, built from scratch once per session; pending requests."""

from __future__ import annotations

import asyncio
import json
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.batching import PendingRequest

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


def build_test_repository(root: Path) -> dict[str, Reference]:
    """Write every test model under `root`; return, per model, its reference.

    Four models go through seqserve's own exporter (length-aware, exact under
    padding, parity-checked); their reference is the plain nn.LSTM/nn.GRU
    module run on one unpadded sequence. The fifth is a graph seqserve did not
    export (family F10): a plain GRU read out at `out[:, -1]`, with no lengths
    input, served by batching equal lengths only.
    """
    import torch
    from torch import nn

    from models.export import export_model
    from models.reference import ReferenceModel
    from models.spec import ModelSpec, Tokenizer
    from models.stack import SequenceModel

    warnings.filterwarnings("ignore")
    # NOTE: OpenMP threads spinning beside running servers on 2 cores made
    # each reference call take ~0.65 s instead of ~1 ms.
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    tokenizer = Tokenizer(vocabulary=tuple(VOCABULARY))
    common: dict[str, Any] = {"cell": "lstm", "hidden_size": 8, "num_layers": 1}
    specs = {
        "feat": ModelSpec(
            name="feat",
            task="classification",
            bidirectional=True,
            input_size=5,
            max_length=40,
            num_outputs=3,
            labels=("neg", "neu", "pos"),
            readout="last",
            **common,
        ),
        "tagger": ModelSpec(
            name="tagger",
            task="tagging",
            bidirectional=True,
            input_size=4,
            max_length=30,
            num_outputs=4,
            labels=("B", "I", "O", "X"),
            readout="all",
            **common,
        ),
        "regress": ModelSpec(
            name="regress",
            task="regression",
            input_size=3,
            max_length=30,
            num_outputs=2,
            output_names=("level", "trend"),
            readout="last",
            **common,
        ),
        "text": ModelSpec(
            name="text",
            task="classification",
            cell="gru",
            hidden_size=8,
            input_kind="text",
            embedding_dim=6,
            tokenizer=tokenizer,
            max_length=32,
            num_outputs=2,
            labels=("female", "male"),
            readout="last",
        ),
    }
    references: dict[str, Reference] = {}
    for name, spec in specs.items():
        model = SequenceModel(spec).eval()
        export_model(model, root, version=1, batches=10)
        reference = ReferenceModel(model)

        def run(seq: Any, reference: ReferenceModel = reference, text: bool = spec.input_kind == "text") -> np.ndarray:
            if text:
                x = torch.tensor([tokenizer.encode(seq)], dtype=torch.int64)
            else:
                x = torch.tensor([seq], dtype=torch.float32)
            return reference(x)[0].numpy()

        references[name] = run

    class PlainGRU(nn.Module):  # F10: reads out[:, -1], so only equal lengths batch exactly
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, 8, batch_first=True)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.gru(x)[0][:, -1])

    plain = PlainGRU().eval()
    folder = root / "equal" / "1"
    folder.mkdir(parents=True)
    torch.onnx.export(
        plain,
        (torch.randn(3, 7, 3),),
        str(folder / "model.onnx"),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch", 1: "time"}, "logits": {0: "batch"}},
    )
    meta = json.loads((root / "regress" / "1" / "model.json").read_text())  # same contract, other values
    meta.update(
        name="equal",
        task="classification",
        description="a plain GRU exported elsewhere",
        labels=["no", "yes"],
        output_names=None,
        padding="equal-length",
        formats={"onnx": "model.onnx"},
        input={"kind": "features", "features": 3, "max_length": 20, "tokenizer": None},
        streaming=None,
    )
    meta["graph"].update(lengths=None, output="logits", output_activation="softmax")
    (folder / "model.json").write_text(json.dumps(meta, indent=2))

    def run_plain(seq: Any) -> np.ndarray:
        with torch.no_grad():
            return plain(torch.tensor([seq], dtype=torch.float32))[0].numpy()

    references["equal"] = run_plain

    # A second version of `feat` (same graph): versions are served side by side.
    shutil.copytree(root / "feat" / "1", root / "feat" / "2")
    meta = json.loads((root / "feat" / "2" / "model.json").read_text())
    meta["version"] = 2
    (root / "feat" / "2" / "model.json").write_text(json.dumps(meta))
    return references


@dataclass(frozen=True)
class TwoVersions:
    """Model `swap` (a feature classifier) in two versions with different weights, each exported by
    seqserve's exporter into a staging folder: `<staging>/swap/<version>`. Tests copy them into a
    repository of their own. `expected[v](seq)`: version v's probabilities for one sequence alone."""

    staging: Path
    expected: dict[int, Callable[[Any], np.ndarray]]
    features: int = 5
    max_length: int = 20


@pytest.fixture(scope="session")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> TwoVersions:
    import torch

    from models.export import export_model
    from models.reference import ReferenceModel
    from models.spec import ModelSpec
    from models.stack import SequenceModel

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    staging = tmp_path_factory.mktemp("two-versions")
    spec = ModelSpec(
        name="swap",
        task="classification",
        cell="lstm",
        hidden_size=8,
        num_layers=1,
        input_size=5,
        max_length=20,
        num_outputs=3,
        labels=("a", "b", "c"),
        readout="last",
    )
    expected: dict[int, Callable[[Any], np.ndarray]] = {}
    for version in (1, 2):
        torch.manual_seed(100 + version)
        model = SequenceModel(spec).eval()
        export_model(model, staging, version=version, batches=5)
        reference = ReferenceModel(model)

        def run(seq: Any, reference: ReferenceModel = reference) -> np.ndarray:
            logits = reference(torch.tensor([seq], dtype=torch.float32))[0].numpy().astype(np.float64)
            exp = np.exp(logits - logits.max())
            result: np.ndarray = exp / exp.sum()
            return result

        expected[version] = run
    return TwoVersions(staging, expected)


NewRequest = Callable[..., PendingRequest]


@pytest.fixture
def new_request() -> Iterator[NewRequest]:
    """Makes a pending request of sequences of the given lengths, without a running event loop (for the parts of
    the batcher that need none); its future belongs to a loop that never runs."""
    loop = asyncio.new_event_loop()

    def make(*lengths: int, deadline: float = float("inf"), enqueued_at: float = 0.0) -> PendingRequest:
        sequences = [np.zeros((length, 1), dtype=np.float32) for length in lengths]
        return PendingRequest(sequences, loop.create_future(), enqueued_at, deadline, arrived_idle=False)

    yield make
    loop.close()
