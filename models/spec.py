"""What a model is, as data: the architecture and the metadata the server needs.

A ``ModelSpec`` is written by ``seqserve train`` next to each checkpoint and read
by ``seqserve export``; users write one by hand (JSON or YAML) for their own
checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

Cell = Literal["lstm", "gru"]
Readout = Literal["last", "final", "mean", "max", "all"]
Task = Literal["classification", "regression", "tagging"]
InputKind = Literal["features", "text"]

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"


class SpecError(ValueError):
    """A spec that cannot describe a model; the message names the field."""


@dataclass(frozen=True)
class Tokenizer:
    """Character tokenizer: id = position in ``vocabulary``; 0 pads, 1 is unknown."""

    vocabulary: tuple[str, ...]
    lowercase: bool = True
    type: Literal["char"] = "char"
    padding_id: int = 0
    unknown_id: int = 1

    def encode(self, text: str) -> list[int]:
        index = {token: i for i, token in enumerate(self.vocabulary)}
        source = text.lower() if self.lowercase else text
        return [index.get(ch, self.unknown_id) for ch in source]

    @classmethod
    def build(cls, texts: list[str], lowercase: bool = True, min_count: int = 1) -> Tokenizer:
        counts: dict[str, int] = {}
        for text in texts:
            for ch in text.lower() if lowercase else text:
                counts[ch] = counts.get(ch, 0) + 1
        chars = sorted(ch for ch, n in counts.items() if n >= min_count)
        return cls(vocabulary=(PAD_TOKEN, UNK_TOKEN, *chars), lowercase=lowercase)


@dataclass(frozen=True)
class Normalization:
    """Affine scaling baked into the graph: ``(x - mean) / std`` on the way in
    (features) or ``y * std + mean`` on the way out (regression)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and serving metadata of one length-aware sequence model."""

    name: str
    task: Task
    cell: Cell
    hidden_size: int
    num_outputs: int
    input_kind: InputKind = "features"
    input_size: int | None = None
    """Features per step (``input_kind="features"``)."""
    embedding_dim: int | None = None
    """Embedding width (``input_kind="text"``)."""
    tokenizer: Tokenizer | None = None
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    dropout: float = 0.0
    readout: Readout = "last"
    head_hidden: int | None = None
    """Width of a hidden ReLU layer in the head; ``None`` for one Linear."""
    max_length: int = 256
    labels: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    input_normalization: Normalization | None = None
    output_normalization: Normalization | None = None
    description: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise SpecError("; ".join(problems))

    def _problems(self) -> Any:
        for name, allowed in (("task", Task), ("cell", Cell), ("readout", Readout), ("input_kind", InputKind)):
            if getattr(self, name) not in get_args(allowed):
                yield f"{name}: {getattr(self, name)!r} is not one of {list(get_args(allowed))}"
        for name in ("hidden_size", "num_outputs", "num_layers", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                yield f"{name}: must be a positive integer, got {value!r}"
        if not 0.0 <= self.dropout < 1.0:
            yield f"dropout: must be in [0, 1), got {self.dropout!r}"
        if self.proj_size and (self.cell != "lstm" or not 0 < self.proj_size < self.hidden_size):
            yield "proj_size: only for lstm, and 0 < proj_size < hidden_size"
        if self.input_kind == "features" and not (isinstance(self.input_size, int) and self.input_size > 0):
            yield "input_size: feature models need the number of features per step"
        if self.input_kind == "text":
            if self.tokenizer is None:
                yield "tokenizer: text models need a vocabulary"
            if not (isinstance(self.embedding_dim, int) and self.embedding_dim > 0):
                yield "embedding_dim: text models need an embedding width"
        if self.task == "tagging" and self.readout != "all":
            yield "readout: a tagging model reads every step (readout 'all')"
        if self.task != "tagging" and self.readout == "all":
            yield "readout: 'all' is only for tagging models"
        if self.task in ("classification", "tagging"):
            if self.labels is None or len(self.labels) != self.num_outputs:
                yield f"labels: need one label per output ({self.num_outputs})"
        elif self.output_names is not None and len(self.output_names) != self.num_outputs:
            yield f"output_names: need one name per output ({self.num_outputs})"
        if self.input_normalization and self.input_size is not None:
            n = self.input_normalization
            if len(n.mean) != self.input_size or len(n.std) != self.input_size:
                yield f"input_normalization: mean and std need {self.input_size} values"

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def step_size(self) -> int:
        """Width of one step's output of the top layer, over all directions."""
        return self.directions * (self.proj_size or self.hidden_size)

    @property
    def rnn_input_size(self) -> int:
        size = self.input_size if self.input_kind == "features" else self.embedding_dim
        assert size is not None
        return size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown field(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        if values.get("tokenizer") is not None:
            tok = dict(values["tokenizer"])
            tok["vocabulary"] = tuple(tok["vocabulary"])
            values["tokenizer"] = Tokenizer(**tok)
        for key in ("input_normalization", "output_normalization"):
            if values.get(key) is not None:
                values[key] = Normalization(tuple(values[key]["mean"]), tuple(values[key]["std"]))
        for key in ("labels", "output_names"):
            if values.get(key) is not None:
                values[key] = tuple(str(v) for v in values[key])
        try:
            return cls(**values)
        except TypeError as exc:  # a required field is missing
            raise SpecError(str(exc).replace("ModelSpec.__init__() ", "")) from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> ModelSpec:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a spec is a mapping of fields")
        return cls.from_dict(data)
