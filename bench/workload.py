"""What the benchmark sends: the reference model, seeded sequences, pre-encoded request bodies."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

REFERENCE_NAME = "reference"
REFERENCE_FEATURES = 32
REFERENCE_HIDDEN = 128
REFERENCE_CLASSES = 5
MIN_LENGTH, MAX_LENGTH = 10, 200
SEED = 0


def build_reference(repository: Path, *, parity_batches: int = 4) -> Path:
    """Export the reference model (2-layer BiLSTM, 32 features, hidden 128, 5 classes, seed 0)
    into `repository` in a child process, so that torch's thread pool never shares a
    process with the ONNX Runtime sessions measured here."""
    entry = repository / REFERENCE_NAME / "1"
    if (entry / "model.json").is_file():
        return entry
    subprocess.run(
        [sys.executable, "-m", "bench.workload", str(repository), str(parity_batches)],
        check=True,
    )
    return entry


def _export(repository: Path, parity_batches: int) -> None:
    import warnings

    import torch

    from models.export import export_model
    from models.spec import ModelSpec
    from models.stack import SequenceModel

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    spec = ModelSpec(
        name=REFERENCE_NAME,
        task="classification",
        cell="lstm",
        bidirectional=True,
        num_layers=2,
        hidden_size=REFERENCE_HIDDEN,
        input_size=REFERENCE_FEATURES,
        num_outputs=REFERENCE_CLASSES,
        labels=tuple(f"class-{i}" for i in range(REFERENCE_CLASSES)),
        readout="last",
        max_length=MAX_LENGTH,
        description="seqserve's benchmark reference: 2-layer BiLSTM, 32 features, hidden 128, 5 classes, seed 0.",
    )
    export_model(SequenceModel(spec).eval(), repository, version=1, batches=parity_batches)


@dataclass(frozen=True)
class ModelInput:
    """What the benchmark needs to know about a served model, read from its model.json."""

    name: str
    kind: str  # "features" or "text"
    features: int | None
    max_length: int
    alphabet: str  # characters a text model knows

    @classmethod
    def read(cls, model_json: Path) -> ModelInput:
        meta = json.loads(model_json.read_text())
        tokenizer = meta["input"].get("tokenizer") or {}
        vocabulary = tokenizer.get("vocabulary") or []
        alphabet = "".join(t for t in vocabulary if len(t) == 1 and t.isalpha())
        return cls(
            meta["name"], meta["input"]["kind"], meta["input"]["features"], meta["input"]["max_length"], alphabet
        )


@dataclass(frozen=True)
class Workload:
    """`count` sequences of one model, lengths uniform in [lo, hi], seeded; each request holds one."""

    model: ModelInput
    sequences: list[np.ndarray] | list[str]
    lengths: np.ndarray

    @classmethod
    def generate(cls, model: ModelInput, count: int, seed: int = SEED) -> Workload:
        rng = np.random.default_rng(seed)
        hi = min(MAX_LENGTH, model.max_length)
        lo = min(MIN_LENGTH, hi)
        lengths = rng.integers(lo, hi + 1, size=count)
        if model.kind == "text":
            letters = np.array(list(model.alphabet or "abcdefghijklmnopqrstuvwxyz"))
            texts = ["".join(rng.choice(letters, size=int(n))) for n in lengths]
            return cls(model, texts, lengths)
        assert model.features is not None
        seqs = [rng.standard_normal((int(n), model.features)).astype(np.float32) for n in lengths]
        return cls(model, seqs, lengths)

    def json_bodies(self, per_request: int = 1) -> list[bytes]:
        """`/predict` bodies of `per_request` sequences each (float32 values, as a client would send them),
        the sequences taken in turn (wrapping around)."""
        n = len(self.sequences)
        groups = [[self.sequences[(i * per_request + k) % n] for k in range(per_request)] for i in range(n)]
        return [orjson.dumps({"inputs": group}, option=orjson.OPT_SERIALIZE_NUMPY) for group in groups]

    def v2_json_bodies(self) -> list[bytes]:
        """V2 `/infer` bodies with the tensor as JSON numbers (feature models only)."""
        bodies = []
        for seq in self.sequences:
            assert isinstance(seq, np.ndarray)
            document = {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, *seq.shape], "data": seq.ravel()}]
            }
            bodies.append(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY))
        return bodies

    def v2_binary_bodies(self) -> list[tuple[bytes, int]]:
        """V2 `/infer` bodies under the binary tensor extension: (body, JSON header length)."""
        bodies = []
        for seq in self.sequences:
            assert isinstance(seq, np.ndarray)
            data = np.ascontiguousarray(seq, dtype="<f4").tobytes()
            header = orjson.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [1, *seq.shape],
                            "parameters": {"binary_data_size": len(data)},
                        }
                    ]
                }
            )
            bodies.append((header + data, len(header)))
        return bodies


if __name__ == "__main__":
    _export(Path(sys.argv[1]), int(sys.argv[2]))
