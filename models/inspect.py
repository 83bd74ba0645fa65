"""``seqserve inspect``: what is in a checkpoint, and a first guess at its spec."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from torch import Tensor


def guess_spec(state: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Read cell, sizes, layers and directions off ``nn.LSTM``/``nn.GRU`` names."""
    anchors = [k for k in state if k.endswith("weight_ih_l0")]
    if not anchors:
        return None
    prefix = anchors[0][: -len("weight_ih_l0")]
    w_ih, w_hh = state[prefix + "weight_ih_l0"], state[prefix + "weight_hh_l0"]
    proj = state.get(prefix + "weight_hr_l0")
    # With proj_size, weight_hh is [4H, P] and weight_hr [P, H].
    hidden = int(proj.shape[1]) if proj is not None else int(w_hh.shape[1])
    cell = "lstm" if int(w_ih.shape[0]) == 4 * hidden else "gru"
    layers = 1 + max(int(k[len(prefix) + len("weight_ih_l"):].split("_")[0]) for k in state
                     if k.startswith(prefix + "weight_ih_l"))
    guess: dict[str, Any] = {
        "cell": cell,
        "hidden_size": hidden,
        "num_layers": layers,
        "bidirectional": (prefix + "weight_ih_l0_reverse") in state,
        "input_size": int(w_ih.shape[1]),
    }
    if proj is not None:
        guess["proj_size"] = int(proj.shape[0])
    embeddings = [k for k, v in state.items() if "emb" in k.lower() and v.ndim == 2 and v.shape[1] == w_ih.shape[1]]
    if embeddings:
        guess["input_kind"] = "text"
        guess["embedding_dim"] = guess.pop("input_size")
        guess["vocabulary_size"] = int(state[embeddings[0]].shape[0])
    heads = [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2 and not k.startswith(prefix)
             and k not in embeddings]
    if heads:
        guess["num_outputs"] = int(state[heads[-1]].shape[0])
    if prefix != "rnn.":
        guess["rnn_prefix"] = prefix
    return guess


def describe(state: Mapping[str, Tensor]) -> str:
    width = max(len(k) for k in state)
    lines = [f"{len(state)} tensors, {sum(v.numel() for v in state.values()):,} values"]
    lines += [f"  {k:<{width}}  {str(v.dtype).removeprefix('torch.'):<8} {list(v.shape)}" for k, v in state.items()]
    guess = guess_spec(state)
    if guess is None:
        lines.append("no nn.LSTM / nn.GRU weights (weight_ih_l0) found")
    else:
        lines.append("looks like: " + json.dumps(guess))
    return "\n".join(lines)
