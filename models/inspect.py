"""``seqserve inspect``: what is in a checkpoint, which family it looks like,
and a spec to start from.

Everything is read off tensor names and shapes, the way a person would read
them: ``cell.weight_ih`` without a layer suffix is an ``nn.LSTMCell`` (F7), two
LSTMs under different prefixes without ``_reverse`` are a hand-made BiLSTM
(F8), ``weight_hr_l0`` is a projection (F6), and so on. The suggested spec
carries the name map, so it exports as written once labels and lengths are
filled in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from models.spec import FAMILIES, Family

CHO_ARRAY = re.compile(r"^(?P<kind>[WUb])_?(?P<gate>[zrh])$", re.IGNORECASE)
BACKWARD_HINTS = ("bwd", "back", "rev", "_b.", "_r.")


@dataclass(frozen=True)
class FamilyGuess:
    family: Family
    reason: str
    spec: dict[str, Any]
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Linear:
    prefix: str
    out_features: int
    in_features: int
    has_bias: bool


def guess_family(state: Mapping[str, Tensor], name: str = "model") -> FamilyGuess | None:
    """The most likely family and a spec for it, or ``None`` when no recurrent
    weights are recognisable."""
    cho = _cho_arrays(state)
    if cho is not None:
        return _guess_cho(state, cho, name)
    # Only prefixes whose input and recurrent weights are both there can be read.
    cells = sorted(
        {k[: -len("weight_ih")] for k in state if k.endswith("weight_ih") and k[: -len("ih")] + "hh" in state}
    )
    stacks = [
        k[: -len("weight_ih_l0")] for k in state if k.endswith("weight_ih_l0") and k[: -len("ih_l0")] + "hh_l0" in state
    ]
    if cells:
        return _guess_rnn(
            state, name, cells[0], "F7", f"{cells[0]}weight_ih has no layer suffix: an nn.LSTMCell in a step loop"
        )
    if not stacks:
        return None
    if len(stacks) >= 2 and not any(s + "weight_ih_l0_reverse" in state for s in stacks):
        backward = next((s for s in stacks if any(h in s.lower() for h in BACKWARD_HINTS)), stacks[1])
        forward = next(s for s in stacks if s != backward)
        return _guess_rnn(
            state,
            name,
            forward,
            "F8",
            f"two LSTMs ({forward}*, {backward}*) without _reverse weights: a BiLSTM built by "
            f"hand with torch.flip; {backward}* taken as the one over the flipped input",
            backward=backward,
        )
    prefix = stacks[0]
    return _guess_rnn(state, name, prefix, None, "")


def _guess_rnn(
    state: Mapping[str, Tensor], name: str, prefix: str, family: Family | None, reason: str, backward: str | None = None
) -> FamilyGuess:
    cell_form = family == "F7"
    suffix = "" if cell_form else "_l0"
    w_ih, w_hh = state[f"{prefix}weight_ih{suffix}"], state[f"{prefix}weight_hh{suffix}"]
    proj = state.get(f"{prefix}weight_hr_l0")
    # With proj_size, weight_hh is [4H, P] and weight_hr [P, H].
    hidden = int(proj.shape[1]) if proj is not None else int(w_hh.shape[1])
    cell = "lstm" if int(w_ih.shape[0]) == 4 * hidden else "gru"
    layers = (
        1
        if cell_form
        else 1
        + max(
            int(k[len(prefix) + len("weight_ih_l") :].split("_")[0])
            for k in state
            if k.startswith(prefix + "weight_ih_l")
        )
    )
    bidirectional = backward is not None or f"{prefix}weight_ih_l0_reverse" in state
    rnn_prefixes = [prefix] + ([backward] if backward else [])
    rest = {k: v for k, v in state.items() if not any(k.startswith(p) for p in rnn_prefixes)}
    notes: list[str] = []

    embedding = next((k for k, v in rest.items() if "emb" in k.lower() and v.ndim == 2), None)
    if embedding is None:  # an embedding whose width feeds the RNN directly, whatever its name
        embedding = next(
            (
                k
                for k, v in rest.items()
                if k.endswith(".weight")
                and v.ndim == 2
                and k[: -len("weight")] + "bias" not in rest
                and v.shape[1] == w_ih.shape[1]
            ),
            None,
        )
    if embedding is not None:
        rest.pop(embedding)
    step = (2 if bidirectional else 1) * (int(proj.shape[0]) if proj is not None else hidden)
    norm = next(
        (
            k[: -len("weight")]
            for k, v in rest.items()
            if k.endswith("weight") and v.ndim == 1 and v.shape[0] == step and k[: -len("weight")] + "bias" in rest
        ),
        None,
    )
    if norm is not None:
        rest.pop(norm + "weight"), rest.pop(norm + "bias")
    linears = _linears(rest)
    rnn_in = int(w_ih.shape[1])
    input_mlp: list[Linear] = []
    if embedding is not None:
        width = int(state[embedding].shape[1])
        while linears and width != rnn_in and linears[0].in_features == width:
            input_mlp.append(linears.pop(0))
            width = input_mlp[-1].out_features
    head = linears
    if family is None:
        if proj is not None:
            family, reason = "F6", f"{prefix}weight_hr_l0 is a projection: nn.LSTM(proj_size={int(proj.shape[0])})"
        elif embedding is not None and (norm is not None or input_mlp):
            family, reason = (
                "F4",
                (
                    f"{embedding} is an embedding, followed by "
                    + ("an MLP, " if input_mlp else "")
                    + "an LSTM"
                    + (f" and a LayerNorm ({norm}*)" if norm else "")
                ),
            )
        elif cell == "gru":
            family, reason = "F3", f"{prefix}weight_ih_l0 has 3 gates: an nn.GRU"
        elif bidirectional:
            family, reason = (
                "F1",
                (
                    f"{prefix}*_reverse: a bidirectional nn.LSTM; for a tagger with a per-step "
                    "head (F5) set family F5, task tagging, readout all"
                ),
            )
        else:
            family, reason = "F2", f"{prefix}weight_ih_l0 without _reverse: a unidirectional nn.LSTM"

    renames: dict[str, str] = {}
    if embedding is not None:
        renames[embedding] = "embedding.weight"
    for i, layer in enumerate(input_mlp):
        renames.update(_rename_linear(layer, f"input_mlp.{2 * i}."))
    if norm is not None:
        renames.update({norm + "weight": "norm.weight", norm + "bias": "norm.bias"})
    head_hidden = None
    if len(head) == 1:
        renames.update(_rename_linear(head[0], "head."))
    elif len(head) == 2:
        head_hidden = head[0].out_features
        renames.update(_rename_linear(head[0], "head.0."))
        renames.update(_rename_linear(head[1], "head.2."))
    elif head:
        notes.append(
            f"{len(head)} linear layers after the RNN ({', '.join(h.prefix for h in head)}): seqserve's "
            "head has at most one hidden layer"
        )
    else:
        notes.append("no linear head found")
    num_outputs = head[-1].out_features if head else 1
    pooled = head[0].in_features if head else step
    concat = embedding is not None and pooled == step + (input_mlp[-1].out_features if input_mlp else rnn_in)

    spec: dict[str, Any] = {"name": _slug(name), "family": family}
    regression = family == "F2" and num_outputs == 1
    spec["task"] = "regression" if regression else "classification"
    spec.update({"cell": cell, "hidden_size": hidden, "num_layers": layers, "bidirectional": bidirectional})
    if proj is not None:
        spec["proj_size"] = int(proj.shape[0])
    if embedding is not None:
        vocabulary = int(state[embedding].shape[0])
        spec.update({"input_kind": "text", "embedding_dim": int(state[embedding].shape[1]), "tokenizer": None})
        notes.append(
            f"text: fill in tokenizer.vocabulary, {vocabulary} entries in the embedding's order "
            "(id 0 pads, id 1 is unknown)"
        )
    else:
        spec["input_size"] = rnn_in
    if input_mlp:
        spec["input_mlp"] = [layer.out_features for layer in input_mlp]
    if norm is not None:
        spec["layer_norm"] = True
    if concat:
        spec["concat_input_mean"] = True
    spec["readout"] = "mean" if family == "F4" else "last"
    spec["num_outputs"] = num_outputs
    if head_hidden:
        spec["head_hidden"] = head_hidden
    if regression:
        spec["output_names"] = ["value"]
    else:
        spec["labels"] = [f"class_{i}" for i in range(num_outputs)]
    spec["max_length"] = 256
    spec["names"] = {
        "prefixes": {prefix: "rnn."} if prefix != "rnn." else {},
        "renames": renames,
        "backward": backward,
        "ignore": [],
    }
    return FamilyGuess(family, reason, spec, tuple(notes))


def _cho_arrays(state: Mapping[str, Tensor]) -> dict[str, str] | None:
    """``{"W_z": checkpoint name, ...}`` when all nine Cho GRU arrays are there."""
    found: dict[str, str] = {}
    for key in state:
        m = CHO_ARRAY.match(key.rsplit(".", 1)[-1])
        if m:
            found.setdefault(f"{m['kind'].upper() if m['kind'] != 'b' else 'b'}_{m['gate'].lower()}", key)
    return found if len(found) == 9 else None


def _guess_cho(state: Mapping[str, Tensor], cho: dict[str, str], name: str) -> FamilyGuess:
    hidden = int(state[cho["U_z"]].shape[0])
    w_z = state[cho["W_z"]]
    layout = "x_w" if int(w_z.shape[0]) != hidden and int(w_z.shape[1]) == hidden else "w_x"
    features = int(w_z.shape[1] if layout == "w_x" else w_z.shape[0])
    renames = {key: f"rnn.{canonical}" for canonical, key in cho.items()}
    rest = {k: v for k, v in state.items() if k not in renames}
    weight = next((k for k, v in rest.items() if v.ndim == 2), None)
    bias = next((k for k, v in rest.items() if v.ndim == 1), None)
    notes = []
    num_outputs = 1
    if weight is not None:
        num_outputs = int(rest[weight].shape[0] if layout == "w_x" else rest[weight].shape[1])
        renames[weight] = "head.weight"
    else:
        notes.append("no output matrix found (W_y)")
    if bias is not None:
        renames[bias] = "head.bias"
    spec = {
        "name": _slug(name),
        "family": "F9",
        "task": "classification",
        "cell": "gru",
        "hidden_size": hidden,
        "input_size": features,
        "readout": "last",
        "num_outputs": num_outputs,
        "labels": [f"class_{i}" for i in range(num_outputs)],
        "max_length": 256,
        "array_layout": layout,
        "names": {"prefixes": {}, "renames": renames, "backward": None, "ignore": []},
    }
    reason = (
        f"arrays {', '.join(sorted(cho.values()))}: a GRU in Cho et al.'s form "
        f"({'W @ x' if layout == 'w_x' else 'x @ W'})"
    )
    return FamilyGuess("F9", reason, spec, tuple(notes))


def _linears(state: Mapping[str, Tensor]) -> list[Linear]:
    out = []
    for key, value in state.items():
        if key.endswith("weight") and value.ndim == 2:
            prefix = key[: -len("weight")]
            out.append(Linear(prefix, int(value.shape[0]), int(value.shape[1]), prefix + "bias" in state))
    return out


def _rename_linear(layer: Linear, to: str) -> dict[str, str]:
    names = {layer.prefix + "weight": to + "weight"}
    if layer.has_bias:
        names[layer.prefix + "bias"] = to + "bias"
    return names


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return slug[:64] or "model"


def describe(state: Mapping[str, Tensor], name: str = "model") -> str:
    width = max(len(k) for k in state)
    lines = [f"{len(state)} tensors, {sum(v.numel() for v in state.values()):,} values"]
    lines += [f"  {k:<{width}}  {str(v.dtype).removeprefix('torch.'):<8} {list(v.shape)}" for k, v in state.items()]
    guess = guess_family(state, name)
    if guess is None:
        lines.append(
            "no recurrent weights recognised (nn.LSTM/nn.GRU weight_ih_l0, nn.LSTMCell weight_ih, "
            "or Cho GRU arrays W_z, U_z, b_z, ...); with --module FILE.py:CLASS seqserve settles it from your "
            "module, or exports it as it is"
        )
        return "\n".join(lines)
    lines.append(f"family: {guess.family} ({FAMILIES[guess.family]})")
    lines.append(f"because: {guess.reason}")
    lines += [f"note: {note}" for note in guess.notes]
    lines.append(
        "read off the names only; to settle the wiring from your module (layers, readout, activations, "
        "how it is called) and export with no spec: seqserve inspect|export CHECKPOINT --module FILE.py:CLASS"
    )
    lines.append("suggested spec (check labels, max_length and readout):")
    lines.append(json.dumps(guess.spec, indent=2))
    return "\n".join(lines)
