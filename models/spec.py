"""What a model is, as data: the architecture and the metadata the server needs.

A ``ModelSpec`` is written by ``seqserve train`` next to each checkpoint and read
by ``seqserve export``; users write one by hand (JSON or YAML) for their own
checkpoints.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args

Cell = Literal["lstm", "gru"]
Readout = Literal["last", "final", "mean", "max", "all"]
Task = Literal["classification", "regression", "tagging"]
InputKind = Literal["features", "text"]
Family = Literal["F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8", "F9"]
"""The tutorial-style model families a user's checkpoint can come from, described in ``FAMILIES``."""
Activation = Literal["relu", "tanh", "gelu"]
ReferenceInputs = Literal["batch", "batch_and_lengths", "sequence", "time_major", "time_major_and_lengths"]
ArrayLayout = Literal["w_x", "x_w", "concat"]
OutputActivation = Literal["none", "softmax", "log_softmax", "sigmoid"]
TokenizerType = Literal["char", "word", "regex"]
LAYER_KINDS = (
    "linear",
    "layernorm",
    "dropout",
    "identity",
    "relu",
    "gelu",
    "tanh",
    "silu",
    "sigmoid",
    "elu",
    "leaky_relu",
    "softplus",
    "mish",
    "hardtanh",
)
"""What an ``input_layers``/``head_layers`` entry may name: ``linear:N`` (``linear:N:nobias``),
``layernorm`` (``layernorm:EPS``), ``dropout``, ``identity``, an activation (``leaky_relu:SLOPE``)."""

FAMILIES: dict[str, str] = {
    "F1": "BiLSTM classifier: nn.LSTM(bidirectional=True), fc(out[:, -1, :])",
    "F2": "LSTM regressor / forecaster: nn.LSTM, fc(out[:, -1, :])",
    "F3": "GRU / BiGRU classifier: nn.GRU, last step or final states",
    "F4": "text classifier: embedding, MLP, packed multi-layer LSTM, LayerNorm, masked mean, concat, MLP head",
    "F5": "sequence tagger: BiLSTM with a per-step head",
    "F6": "stacked LSTM with projections: nn.LSTM(proj_size=P)",
    "F7": "step loop over nn.LSTMCell",
    "F8": "BiLSTM from two nn.LSTMs and torch.flip",
    "F9": "GRU in the original Cho et al. form, NumPy arrays",
}

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"


class SpecError(ValueError):
    """A spec that cannot describe a model; the message names the field."""


@dataclass(frozen=True)
class Tokenizer:
    """Text to ids: id = position in ``vocabulary``. ``char`` takes one token per
    character (multi-character entries such as ``<pad>`` are specials no text
    matches), ``word`` splits on whitespace (``str.split()``), ``regex`` takes
    every match of ``pattern`` (``re.findall``). Lowercases first only when
    ``lowercase`` (the user's own tokenizer did)."""

    vocabulary: tuple[str, ...]
    lowercase: bool = True
    type: TokenizerType = "char"
    padding_id: int = 0
    unknown_id: int = 1
    pattern: str | None = None

    @cached_property
    def _index(self) -> dict[str, int]:
        single = self.type == "char"
        return {token: i for i, token in enumerate(self.vocabulary) if not single or len(token) == 1}

    def tokens(self, text: str) -> list[str]:
        source = text.lower() if self.lowercase else text
        if self.type == "word":
            return source.split()
        if self.type == "regex":
            return re.findall(self.pattern or r"\w+", source)
        return list(source)

    def encode(self, text: str) -> list[int]:
        return [self._index.get(token, self.unknown_id) for token in self.tokens(text)]

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


def reject_unknown(where: str, data: dict[str, Any], known: set[str]) -> None:
    """Name the fields a spec section does not know, typos first among them."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"{where}unknown field(s) {unknown}; known: {sorted(known)}")


@dataclass(frozen=True)
class NameMap:
    """How a checkpoint's tensor names become seqserve's (``rnn.weight_ih_l0``,
    ``head.weight``, ...), so a checkpoint maps without being edited.

    Each name goes through the first rule that applies: an exact rename; else
    the ``backward`` prefix (F8); else the first prefix rule, in order, whose
    source starts it. A name no rule touches is used as it is.
    """

    prefixes: tuple[tuple[str, str], ...] = ()
    """Ordered ``(from, to)`` prefix rules, e.g. ``("lstm.", "rnn."), ("fc.", "head.")``."""
    renames: tuple[tuple[str, str], ...] = ()
    """Exact ``(from, to)`` renames, e.g. ``("mlp.3.weight", "input_mlp.2.weight")``."""
    backward: str | None = None
    """F8: the checkpoint prefix of the LSTM that runs over the flipped input; its
    ``weight_ih_l0`` becomes ``rnn.weight_ih_l0_reverse`` and so on."""
    ignore: tuple[str, ...] = ()
    """Checkpoint tensors that are not part of the served model (an auxiliary head)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefixes": dict(self.prefixes),
            "renames": dict(self.renames),
            "backward": self.backward,
            "ignore": list(self.ignore),
        }

    @classmethod
    def from_dict(cls, data: Any) -> NameMap:
        if not isinstance(data, dict):
            raise SpecError("names: a mapping with prefixes, renames, backward, ignore")
        reject_unknown("names: ", data, {"prefixes", "renames", "backward", "ignore"})
        pairs = {}
        for key in ("prefixes", "renames"):
            value = data.get(key) or {}
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise SpecError(f"names.{key}: a mapping of checkpoint name to seqserve name")
            pairs[key] = tuple(value.items())
        backward = data.get("backward")
        if backward is not None and not isinstance(backward, str):
            raise SpecError("names.backward: a checkpoint prefix such as 'lstm_bwd.'")
        return cls(pairs["prefixes"], pairs["renames"], backward, tuple(str(n) for n in data.get("ignore") or ()))


@dataclass(frozen=True)
class UserModule:
    """The user's own model class, to check the export against.

    Loaded from ``source`` (a ``.py`` file; relative to the spec file),
    built as ``class(**kwargs)``, given the checkpoint strictly (a torch
    module's ``load_state_dict(strict=True)``; for a plain Python object, each
    array is set on the attribute of the same name), and run on each sequence
    alone: ``batch`` calls ``module(x[None])``, ``batch_and_lengths``
    ``module(x[None], lengths)``, ``sequence`` ``module(x)``. A tuple output
    counts by its first element.
    """

    source: str
    class_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    inputs: ReferenceInputs = "batch"

    def describe(self) -> str:
        return f"user module {Path(self.source).name}:{self.class_name}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "class": self.class_name, "kwargs": self.kwargs, "inputs": self.inputs}

    @classmethod
    def from_dict(cls, data: Any) -> UserModule:
        if not isinstance(data, dict):
            raise SpecError("reference: a mapping with source, class, kwargs, inputs")
        reject_unknown("reference: ", data, {"source", "class", "kwargs", "inputs"})
        problems = []
        if not isinstance(data.get("source"), str):
            problems.append("reference.source: the path of the .py file that defines the module")
        if not isinstance(data.get("class"), str):
            problems.append("reference.class: the name of the module's class")
        if not isinstance(data.get("kwargs", {}), dict):
            problems.append("reference.kwargs: a mapping of constructor arguments")
        inputs = data.get("inputs", "batch")
        if inputs not in get_args(ReferenceInputs):
            problems.append(f"reference.inputs: {inputs!r} is not one of {list(get_args(ReferenceInputs))}")
        if problems:
            raise SpecError("; ".join(problems))
        return cls(data["source"], data["class"], dict(data.get("kwargs", {})), inputs)


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
    """Width of a hidden layer (``activation``) in the head; ``None`` for one Linear."""
    family: Family | None = None
    """Which tutorial family the checkpoint comes from; ``None`` for seqserve's own."""
    names: NameMap = NameMap()
    """How the checkpoint's tensor names map onto seqserve's."""
    reference: UserModule | None = None
    """The user's module that parity is checked against; ``None``: seqserve's reference."""
    input_mlp: tuple[int, ...] = ()
    """Widths of per-step Linear + ``activation`` layers between input and RNN (F4)."""
    activation: Activation = "relu"
    """Activation of the input MLP and of the head's hidden layer."""
    layer_norm: bool = False
    """LayerNorm over each step of the RNN output (F4)."""
    concat_input_mean: bool = False
    """Concatenate the masked mean over time of the RNN's input (the input MLP's
    output) after the pooled RNN output (F4)."""
    array_layout: ArrayLayout = "w_x"
    """F9: ``w_x`` when the arrays are used as ``W @ x`` ([out, in], the paper's
    form), ``x_w`` when as ``x @ W`` ([in, out]), ``concat`` for one matrix per
    gate over ``[x, h]`` (``W_z [H, I+H]``, no ``U``)."""
    input_layers: tuple[str, ...] = ()
    """Per-step layers between input and RNN, any of ``LAYER_KINDS`` in order
    (``["linear:64", "gelu", "linear:32"]``); replaces ``input_mlp``."""
    head_layers: tuple[str, ...] | None = None
    """The head as layers after the readout (``["linear:32", "gelu", "layernorm",
    "linear:2"]``); ``[]``: no head, the answer is the readout itself; ``None``:
    ``head_hidden``'s one or two Linears."""
    output_activation: OutputActivation = "none"
    """What the module applies to its output itself; the graph applies it too."""
    layer_norm_eps: float = 1e-5
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
        if self.task == "classification" and self.readout == "all":
            yield "readout: 'all' is for tagging models, or regression models answering values per step"
        if self.task in ("classification", "tagging"):
            if self.labels is None or len(self.labels) != self.num_outputs:
                yield f"labels: need one label per output ({self.num_outputs})"
        elif self.output_names is not None and len(self.output_names) != self.num_outputs:
            yield f"output_names: need one name per output ({self.num_outputs})"
        for name, allowed in (("activation", Activation), ("array_layout", ArrayLayout)):
            if getattr(self, name) not in get_args(allowed):
                yield f"{name}: {getattr(self, name)!r} is not one of {list(get_args(allowed))}"
        if not all(isinstance(w, int) and w > 0 for w in self.input_mlp):
            yield f"input_mlp: widths must be positive integers, got {list(self.input_mlp)}"
        if self.input_mlp and self.input_layers:
            yield "input_layers: replaces input_mlp; give one of them"
        for where, layers in (("input_layers", self.input_layers), ("head_layers", self.head_layers or ())):
            for i, layer in enumerate(layers):
                problem = layer_problem(layer)
                if problem:
                    yield f"{where}[{i}]: {problem}"
        if self.head_layers is not None and self.head_hidden:
            yield "head_layers: replaces head_hidden; give one of them"
        if self.output_activation != "none" and self.head_layers is None and self.family != "F9":
            yield "output_activation: needs head_layers (the activation ends the head)"
        if self.output_activation not in get_args(OutputActivation):
            yield f"output_activation: {self.output_activation!r} is not one of {list(get_args(OutputActivation))}"
        if self.head_layers is not None and self.task != "tagging":
            width = self.head_out_width
            if width != self.num_outputs:
                yield f"num_outputs: the head answers {width} values, num_outputs says {self.num_outputs}"
        if self.family is not None:
            yield from self._family_problems()
        if self.input_normalization and self.input_size is not None:
            n = self.input_normalization
            if len(n.mean) != self.input_size or len(n.std) != self.input_size:
                yield f"input_normalization: mean and std need {self.input_size} values"

    def _family_problems(self) -> Any:
        family = self.family
        if family not in FAMILIES:
            yield f"family: {family!r} is not one of {list(FAMILIES)}"
            return
        needs: dict[str, dict[str, Any]] = {
            "F1": {"cell": "lstm", "bidirectional": True},
            "F2": {"cell": "lstm", "bidirectional": False},
            "F3": {"cell": "gru"},
            "F4": {"cell": "lstm", "input_kind": "text"},
            "F5": {"task": "tagging"},
            "F6": {"cell": "lstm"},
            "F7": {"cell": "lstm", "bidirectional": False, "num_layers": 1},
            "F8": {"cell": "lstm", "bidirectional": True},
            "F9": {"cell": "gru", "bidirectional": False, "num_layers": 1, "input_kind": "features"},
        }
        for name, value in needs[family].items():
            if getattr(self, name) != value:
                yield f"{name}: family {family} ({FAMILIES[family]}) needs {value!r}, got {getattr(self, name)!r}"
        if family == "F6" and not self.proj_size:
            yield f"proj_size: family F6 ({FAMILIES['F6']}) needs proj_size > 0"
        if family == "F9":
            if self.head_layers not in (None, ()):
                yield "head_layers: family F9 has one Linear head (W_y, b_y) or none ([])"
            if self.readout not in ("last", "final"):
                yield f"readout: family F9 reads the final state ('last' or 'final'), got {self.readout!r}"
            odd = [
                n
                for n in (
                    "input_mlp",
                    "input_layers",
                    "layer_norm",
                    "concat_input_mean",
                    "head_hidden",
                    "input_normalization",
                    "output_normalization",
                )
                if getattr(self, n)
            ]
            if odd:
                yield f"family F9 is a GRU and a Linear head; it has no {', '.join(odd)}"
        if self.array_layout != "w_x" and family != "F9":
            yield "array_layout: only for family F9 (NumPy arrays)"

    @property
    def separate_directions(self) -> bool:
        """F8: the backward direction is its own stack (its layer k > 0 sees
        only backward outputs), not interleaved as in a bidirectional nn.LSTM."""
        return self.family == "F8"

    @property
    def rnn_input_width(self) -> int:
        """Width of what the RNN reads: the input MLP's output, else the input."""
        if self.input_layers:
            return layers_width(self.input_layers, self.rnn_input_size)
        return self.input_mlp[-1] if self.input_mlp else self.rnn_input_size

    @property
    def head_out_width(self) -> int:
        """What the head answers: ``num_outputs``, or with ``head_layers`` their last width."""
        if self.head_layers is None:
            return self.num_outputs
        width = self.step_size if self.readout == "all" else self.pooled_size
        if self.family == "F9":
            width = self.hidden_size if not self.head_layers else self.num_outputs
        return layers_width(self.head_layers, width)

    @property
    def pooled_size(self) -> int:
        return self.step_size + (self.rnn_input_width if self.concat_input_mean else 0)

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
        data = asdict(self)
        data["names"] = self.names.to_dict()
        data["reference"] = self.reference.to_dict() if self.reference else None
        data["input_mlp"] = list(self.input_mlp)
        data["input_layers"] = list(self.input_layers)
        data["head_layers"] = None if self.head_layers is None else list(self.head_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        reject_unknown("", data, {f.name for f in fields(cls)})
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
        if values.get("names") is not None:
            values["names"] = NameMap.from_dict(values["names"])
        else:
            values.pop("names", None)
        if values.get("reference") is not None:
            values["reference"] = UserModule.from_dict(values["reference"])
        for key in ("input_layers", "head_layers"):
            if values.get(key) is not None:
                if not isinstance(values[key], (list, tuple)) or not all(isinstance(v, str) for v in values[key]):
                    raise SpecError(f"{key}: a list of layers such as ['linear:64', 'gelu', 'linear:2']")
                values[key] = tuple(values[key])
        if values.get("input_mlp") is not None:
            if not isinstance(values["input_mlp"], (list, tuple)):
                raise SpecError("input_mlp: a list of layer widths")
            values["input_mlp"] = tuple(values["input_mlp"])
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


def layer_problem(layer: str) -> str | None:
    """What is wrong with one ``input_layers``/``head_layers`` entry, or ``None``."""
    kind, _, rest = layer.partition(":")
    if kind not in LAYER_KINDS:
        return f"{layer!r}: not one of {list(LAYER_KINDS)}"
    if kind == "linear":
        width, _, bias = rest.partition(":")
        if not width.isdigit() or int(width) < 1 or bias not in ("", "nobias"):
            return f"{layer!r}: write linear:WIDTH or linear:WIDTH:nobias"
    elif rest:
        try:
            float(rest)
        except ValueError:
            return f"{layer!r}: the part after ':' is a number (eps, slope)"
    return None


def layers_width(layers: tuple[str, ...], width: int) -> int:
    """The width a stack of layers answers, given the width it reads."""
    for layer in layers:
        kind, _, rest = layer.partition(":")
        if kind == "linear":
            width = int(rest.partition(":")[0])
    return width
