"""Settle a spec from the user's own module: read its submodules, then check how
they are wired by running it.

What the module's submodules say is taken as read: an ``nn.LSTM``'s sizes,
layers, direction and ``proj_size``, an ``nn.Embedding``, the ``nn.Linear``,
``nn.LayerNorm`` and activation modules around the recurrent layer. How they
are wired is settled on probe sequences, one at a time, with forward hooks:
which layers run before the RNN and which after, which readout of the RNN's
output the head reads (each candidate is computed from the captured output and
compared with what the head was given), an activation applied as a function
between two layers, the activation on the module's answer, whether the module
is called time-major and whether it takes lengths. The settled spec is then
built, given the checkpoint, and checked against the module itself on probe
sequences of other lengths; only a spec that matches is returned. Anything
that stops it is said in ``Settled.reason``, naming the layer or operation.
"""

from __future__ import annotations

import inspect as pyinspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from models.spec import ModelSpec, SpecError, Tokenizer, UserModule
from models.usermodule import call_args, instantiate

MATCH = 1e-5
"""Max abs difference at which a candidate counts as the module's own computation."""

RNN_TYPES = (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)
ACTIVATION_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.GELU: "gelu",
    nn.Tanh: "tanh",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
    nn.ELU: "elu",
    nn.Softplus: "softplus",
    nn.Mish: "mish",
    nn.Hardtanh: "hardtanh",
    nn.Identity: "identity",
    nn.Dropout: "dropout",
}
POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.AvgPool1d, nn.MaxPool1d, nn.Flatten)
"""Parameter-free modules whose effect is settled by comparing readouts."""
FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": nn.functional.gelu,
    "sigmoid": torch.sigmoid,
    "silu": nn.functional.silu,
    "elu": nn.functional.elu,
    "leaky_relu:0.01": nn.functional.leaky_relu,
}
"""Activations a module may apply as functions between two layers (``torch.relu(self.fc1(x))``)."""
OUTPUTS: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda y: y,
    "softmax": lambda y: torch.softmax(y, dim=-1),
    "log_softmax": lambda y: torch.log_softmax(y, dim=-1),
    "sigmoid": torch.sigmoid,
}
PROBE_LENGTHS = (7, 5)
CHECK_LENGTHS = (1, 2, 9, 4)


@dataclass
class Settled:
    """What settling found: a spec (``None`` when no family fits), how the module
    is called, what was settled (one line each) and, when no spec, why."""

    spec: dict[str, Any] | None
    inputs: str | None
    settled: list[str] = field(default_factory=list)
    reason: str | None = None
    input_size: int | None = None
    """Features per step the module reads (feature models)."""
    text: bool = False
    vocabulary_size: int | None = None
    padding_idx: int | None = None


class NotSettled(Exception):
    """One candidate wiring does not hold; the message says where."""


@dataclass
class Call:
    name: str
    module: Any
    """The ``nn.Module`` called (typed ``Any``: its sizes are read by attribute)."""
    inputs: tuple[Any, ...]
    output: Any


def settle(
    user: UserModule,
    base: Path,
    state: Mapping[str, Tensor],
    tokenizer: Tokenizer | None = None,
    inputs: str | None = None,
) -> Settled:
    """``inputs``: how the module is called, when the user said so; else it is probed."""
    obj = instantiate(user, base, state)
    if not isinstance(obj, nn.Module):
        return _settle_arrays(obj, user, state, inputs)
    return _settle_module(obj, user, base, state, tokenizer, inputs)


# --- torch modules ------------------------------------------------------------------------------


def _atoms(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules hooks watch: recurrent layers and attention whole, other modules with no children."""
    atoms: list[tuple[str, nn.Module]] = []
    skip: list[str] = []
    for name, sub in module.named_modules():
        if not name or any(name.startswith(s + ".") for s in skip):
            continue
        if isinstance(sub, (*RNN_TYPES, nn.MultiheadAttention, nn.TransformerEncoderLayer)):
            atoms.append((name, sub))
            skip.append(name)
        elif not list(sub.children()):
            atoms.append((name, sub))
    return atoms


def _record(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, list[Call]]:
    calls: list[Call] = []
    handles = []
    for name, sub in _atoms(module):

        def hook(m: nn.Module, inputs: tuple[Any, ...], output: Any, name: str = name) -> None:
            calls.append(Call(name, m, inputs, output))

        handles.append(sub.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = module(*args)
    finally:
        for handle in handles:
            handle.remove()
    return out, calls


def _first(out: Any) -> Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, Tensor):
        raise NotSettled(f"the module returned {type(out).__name__}, not a tensor")
    return out


def _close(a: Tensor, b: Tensor) -> bool:
    return (
        a.shape == b.shape and bool((a.double() - b.double()).abs().max() <= MATCH) if a.numel() else a.shape == b.shape
    )


def _activation_between(before: Tensor, after: Tensor) -> str | None:
    """``""`` when ``after`` is ``before``; the activation applied in between; ``None`` when neither."""
    if _close(before, after):
        return ""
    for name, fn in FUNCTIONS.items():
        if before.shape == after.shape and _close(fn(before), after):
            return name
    return None


def _forward_params(module: nn.Module) -> int:
    try:
        params = pyinspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return 1
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)


def _widths(module: nn.Module) -> list[int]:
    """Candidate features per step: the first RNN's input, then each Linear's and LayerNorm's input."""
    widths: list[int] = []
    for _, sub in module.named_modules():
        if isinstance(sub, (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)):
            widths.append(int(sub.input_size))
    for _, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            widths.append(int(sub.in_features))
        elif isinstance(sub, nn.LayerNorm):
            widths.append(int(sub.normalized_shape[0]))
    return list(dict.fromkeys(widths))


def _settle_module(
    module: nn.Module,
    user: UserModule,
    base: Path,
    state: Mapping[str, Tensor],
    tokenizer: Tokenizer | None,
    inputs: str | None = None,
) -> Settled:
    rnns = [(n, m) for n, m in module.named_modules() if isinstance(m, RNN_TYPES)]
    embeddings = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Embedding)]
    takes_lengths = _forward_params(module) >= 2
    modes = ["batch", "time_major"]
    if takes_lengths:
        modes = [m + "_and_lengths" for m in modes]
    else:
        modes.append("sequence")  # module(x) on one unbatched sequence, as the PyTorch tagging tutorial
    if inputs is not None:
        modes = [inputs]
    text = bool(embeddings)
    widths = [0] if text else _widths(module)
    vocabulary = int(embeddings[0][1].num_embeddings) if text else None
    padding_idx = embeddings[0][1].padding_idx if text else None
    reasons: list[str] = []
    ran: tuple[str, int] | None = None
    for width in widths:
        for mode in modes:
            probes = [_probe(length, width, vocabulary, seed) for seed, length in enumerate(PROBE_LENGTHS)]
            try:
                outputs = [_run(module, mode, p) for p in probes]
            except NotSettled as exc:
                reasons.append(f"called as {mode} with {width or 'token'} features: {exc}")
                continue
            if ran is None:
                ran = (mode, width)
            if not rnns:
                continue
            try:
                spec, settled = _wire(module, mode, probes, outputs, state, text)
            except NotSettled as exc:
                reasons.append(str(exc))
                continue
            result = Settled(
                spec,
                mode,
                settled,
                input_size=width or None,
                text=text,
                vocabulary_size=vocabulary,
                padding_idx=padding_idx,
            )
            problem = _verify(result, module, state, width, vocabulary, tokenizer)
            if problem is None:
                return result
            reasons.append(problem)
    if ran is None:
        return Settled(None, None, reason=f"could not call the module on one sequence: {reasons[0] if reasons else ''}")
    mode, width = ran
    reason = _best_reason(reasons) if rnns else "no nn.LSTM, nn.GRU, nn.LSTMCell or nn.GRUCell in the module"
    return Settled(
        None,
        mode,
        reason=reason,
        input_size=width or None,
        text=text,
        vocabulary_size=vocabulary,
        padding_idx=padding_idx,
    )


def _best_reason(reasons: list[str]) -> str:
    """The most telling reason: one that names a layer, else the first."""
    for reason in reasons:
        if "'" in reason and "called as" not in reason:
            return reason
    return reasons[0] if reasons else "no candidate graph matched"


def _probe(length: int, width: int, vocabulary: int | None, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(1000 + seed)
    if vocabulary is not None:
        return torch.randint(1, max(vocabulary, 2), (length,), generator=generator)
    return torch.randn(length, width, generator=generator)


def _run(module: nn.Module, mode: str, x: Tensor) -> tuple[Tensor, list[Call]]:
    try:
        out, calls = _record(module, call_args(mode, x, len(x)))
    except Exception as exc:  # their module, any error: it means this way of calling it is not theirs
        raise NotSettled(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return one_answer(_first(out), mode), calls


def one_answer(y: Tensor, mode: str) -> Tensor:
    """The module's answer for its one sequence: the batch axis dropped (a time-major
    per-step answer ``[T, 1, O]`` is read as ``[1, T, O]``)."""
    if mode == "sequence":
        return y
    if mode.startswith("time_major") and y.ndim >= 3 and y.shape[1] == 1:
        y = y.transpose(0, 1)
    if y.ndim == 0 or y.shape[0] != 1:
        raise NotSettled(f"answered shape {list(y.shape)} for a batch of one")
    return y[0]


def _rnn_output(call: Call) -> tuple[Tensor, Tensor | None]:
    """A recurrent call's output as ``[T, D]`` for one sequence, and its final ``h_n [L*D, H]``."""
    m = call.module
    out = call.output
    if isinstance(m, (nn.LSTMCell, nn.GRUCell)):
        h = out[0] if isinstance(out, tuple) else out
        return h, None
    seq, state = out
    h_n = state[0] if isinstance(state, tuple) else state
    if isinstance(seq, PackedSequence):
        seq, _ = pad_packed_sequence(seq, batch_first=True)
    elif not getattr(m, "batch_first", False):
        seq = seq.transpose(0, 1)
    if seq.shape[0] != 1:
        raise NotSettled(f"'{call.name}' ran over a batch of {seq.shape[0]}, not one sequence")
    return seq[0], h_n[:, 0]


def _rnn_input(call: Call) -> Tensor:
    x = call.inputs[0]
    m = call.module
    if isinstance(m, (nn.LSTMCell, nn.GRUCell)):
        cell_input: Tensor = x
        return cell_input
    if isinstance(x, PackedSequence):
        x, _ = pad_packed_sequence(x, batch_first=True)
    elif not getattr(m, "batch_first", False):
        x = x.transpose(0, 1)
    if x.shape[0] != 1:
        raise NotSettled(f"'{call.name}' ran over a batch of {x.shape[0]}, not one sequence")
    one: Tensor = x[0]
    return one


LAYER_NAMES = "Linear, LayerNorm, Dropout, Identity or an activation"


def _layer(call: Call) -> str | None:
    m = call.module
    if isinstance(m, nn.Linear):
        return f"linear:{m.out_features}" + ("" if m.bias is not None else ":nobias")
    if isinstance(m, nn.LayerNorm):
        if len(m.normalized_shape) != 1 or not m.elementwise_affine:
            return None
        return "layernorm" if m.eps == 1e-5 else f"layernorm:{m.eps}"
    if isinstance(m, nn.LeakyReLU):
        return f"leaky_relu:{m.negative_slope}"
    return ACTIVATION_MODULES.get(type(m))


def _chain(
    calls: list[Call], start: Tensor, where: str, prefix: str
) -> tuple[list[str], dict[str, str], Tensor, list[str]]:
    """Layers of consecutive calls fed from ``start``: ``(layers, renames, output, notes)``."""
    layers: list[str] = []
    renames: dict[str, str] = {}
    notes: list[str] = []
    current = start
    for call in calls:
        layer = _layer(call)
        if layer is None:
            raise NotSettled(
                f"'{call.name}' ({type(call.module).__name__}) runs {where}; seqserve's stack takes {LAYER_NAMES} there"
            )
        given = call.inputs[0]
        between = _activation_between(current, given) if isinstance(given, Tensor) else None
        if between is None:
            raise NotSettled(
                f"'{call.name}' ({type(call.module).__name__}) {where} reads something other than the "
                "layer before it gives"
            )
        if between:
            layers.append(between)
            notes.append(f"{between} applied as a function before '{call.name}'")
        for pname, _ in call.module.named_parameters():
            renames[f"{call.name}.{pname}"] = f"{prefix}.{len(layers)}.{pname}"
        layers.append(layer)
        current = call.output
    return layers, renames, current, notes


def _readouts(seq: Tensor, h_n: Tensor | None, bidirectional: bool, encoded: Tensor) -> dict[str, Tensor]:
    """Candidate readouts of one sequence's RNN output ``[T, D]`` -> ``[D]`` (``all``: ``[T, D]``)."""
    half = seq.shape[1] // 2
    found = {
        "last": seq[-1],
        "final": torch.cat([seq[-1, :half], seq[0, half:]]) if bidirectional else seq[-1],
        "mean": seq.mean(dim=0),
        "max": seq.max(dim=0).values,
    }
    mean_in = encoded.mean(dim=0)
    candidates: dict[str, Tensor] = {}
    for name, value in found.items():
        candidates[name] = value
        candidates[name + "+input_mean"] = torch.cat([value, mean_in])
    candidates["all"] = seq
    return candidates


def _wire(
    module: nn.Module,
    mode: str,
    probes: list[Tensor],
    outputs: list[tuple[Tensor, list[Call]]],
    state: Mapping[str, Tensor],
    text: bool,
) -> tuple[dict[str, Any], list[str]]:
    answers = [
        _wire_one(module, probe, answer, calls, text) for probe, (answer, calls) in zip(probes, outputs, strict=True)
    ]
    spec, settled = answers[0]
    for other, _ in answers[1:]:
        if other != spec:
            raise NotSettled("the module is wired differently for sequences of different lengths")
    called = {k for k in spec["names"]["renames"]} | {
        k for k in state if any(k.startswith(p) for p in spec["names"]["prefixes"])
    }
    if spec["names"]["backward"]:
        called |= {k for k in state if k.startswith(spec["names"]["backward"])}
    spec["names"]["ignore"] = sorted(k for k in state if k not in called)
    if spec["names"]["ignore"]:
        settled.append(f"not used by forward, left out: {', '.join(spec['names']['ignore'])}")
    settled.insert(0, f"called as {_MODES[mode]}")
    return spec, settled


_MODES = {
    "batch": "module(x) with x [1, T, F] (batch first)",
    "batch_and_lengths": "module(x, lengths) with x [1, T, ...] (batch first)",
    "time_major": "module(x) with x [T, 1, F] (time first)",
    "time_major_and_lengths": "module(x, lengths) with x [T, 1, ...] (time first)",
    "sequence": "module(x) with one unbatched sequence x ([T, F], or [T] token ids)",
}


def _wire_one(
    module: nn.Module, probe: Tensor, answer: Tensor, calls: list[Call], text: bool
) -> tuple[dict[str, Any], list[str]]:
    settled: list[str] = []
    spec: dict[str, Any] = {}
    renames: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    backward_prefix: str | None = None
    rnn_index = [i for i, c in enumerate(calls) if isinstance(c.module, RNN_TYPES)]
    if not rnn_index:
        raise NotSettled("no recurrent layer ran on the probe")
    first, last = rnn_index[0], rnn_index[-1]
    between = [c for c in calls[first:last] if not isinstance(c.module, RNN_TYPES) and _has_state(c.module)]
    if between:
        c = between[0]
        raise NotSettled(f"'{c.name}' ({type(c.module).__name__}) runs between recurrent layers")
    pre, post = calls[:first], calls[last + 1 :]
    # Input side: [embedding] then layers.
    if text:
        if not pre or not isinstance(pre[0].module, nn.Embedding):
            raise NotSettled("the embedding is not the first layer to run")
        emb = pre[0]
        renames[f"{emb.name}.weight"] = "embedding.weight"
        spec.update(input_kind="text", embedding_dim=int(emb.module.embedding_dim))
        start = _squeeze(emb.output)
        pre = pre[1:]
        settled.append(f"'{emb.name}': embedding of {emb.module.num_embeddings} tokens x {emb.module.embedding_dim}")
    else:
        start = probe
        spec.update(input_kind="features", input_size=int(probe.shape[1]))
    pre = [c for c in pre if not (isinstance(c.module, POOLS))]
    if pre and pre[0].inputs and isinstance(pre[0].inputs[0], Tensor) and pre[0].inputs[0].ndim >= 2:
        first_in = pre[0].inputs[0]
        first_in = first_in.transpose(0, 1) if first_in.shape[0] != 1 and first_in.shape[1] == 1 else first_in
        pre[0] = Call(pre[0].name, pre[0].module, (first_in[0],), _squeeze(pre[0].output))
    pre = [Call(c.name, c.module, (_squeeze(c.inputs[0]),), _squeeze(c.output)) for c in pre]
    input_layers, input_renames, encoded, notes = _chain(pre, start, "before the recurrent layer", "input_mlp")
    renames.update(input_renames)
    settled += notes
    if input_layers:
        spec["input_layers"] = input_layers
        settled.append(f"input layers {input_layers} ({', '.join(c.name for c in pre)})")
    # The recurrent layer(s).
    rnn_calls = [calls[i] for i in rnn_index]
    modules = list(dict.fromkeys(id(c.module) for c in rnn_calls))
    by_id = {id(c.module): c for c in rnn_calls}
    if len(modules) > 2:
        raise NotSettled(
            f"{len(modules)} recurrent layers ('{', '.join(by_id[m].name for m in modules)}'); "
            "seqserve takes one stack, or two for a hand-made BiLSTM"
        )
    main = by_id[modules[0]]
    m = main.module
    cell_form = isinstance(m, (nn.LSTMCell, nn.GRUCell))
    spec["cell"] = "lstm" if isinstance(m, (nn.LSTM, nn.LSTMCell)) else "gru"
    spec["hidden_size"] = int(m.hidden_size)
    if cell_form:
        steps = [c for c in rnn_calls if c.module is m]
        if len(steps) != len(encoded):
            raise NotSettled(f"'{main.name}' ran {len(steps)} times for {len(encoded)} steps")
        for i, c in enumerate(steps):
            if not _close(c.inputs[0][0], encoded[i]):
                raise NotSettled(f"'{main.name}' at step {i} reads something other than step {i} of the input")
        seq = torch.stack([_rnn_output(c)[0][0] for c in steps])
        h_n = None
        bidirectional = False
        for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if getattr(m, w, None) is not None:
                renames[f"{main.name}.{w}"] = f"rnn.{w}_l0"
        settled.append(f"'{main.name}': {type(m).__name__} in a step loop, hidden {m.hidden_size}")
    else:
        if len([c for c in rnn_calls if c.module is m]) != 1:
            raise NotSettled(f"'{main.name}' ran more than once on one sequence")
        spec["num_layers"] = int(m.num_layers)
        proj = int(getattr(m, "proj_size", 0) or 0)
        if proj:
            spec["proj_size"] = proj
        spec["dropout"] = float(m.dropout)
        bidirectional = bool(m.bidirectional)
        prefixes[f"{main.name}."] = "rnn."
        seq, h_n = _rnn_output(main)
        if not _close(_rnn_input(main), encoded):
            raise NotSettled(f"'{main.name}' reads something other than the layers before it give")
        if len(modules) == 2:
            back = by_id[modules[1]]
            b = back.module
            if (
                bidirectional
                or not isinstance(b, type(m))
                or (b.hidden_size, b.num_layers) != (m.hidden_size, m.num_layers)
            ):
                raise NotSettled(f"'{main.name}' and '{back.name}' are not two halves of one BiLSTM")
            b_in = _rnn_input(back)
            forward, reverse = main, back
            if _close(b_in, encoded) and _close(_rnn_input(main), torch.flip(encoded, [0])):
                forward, reverse = back, main
            elif not _close(b_in, torch.flip(encoded, [0])):
                raise NotSettled(f"'{back.name}' reads neither the input nor the input flipped in time")
            f_seq, _ = _rnn_output(forward)
            r_seq, _ = _rnn_output(reverse)
            seq = torch.cat([f_seq, torch.flip(r_seq, [0])], dim=1)
            prefixes = {f"{forward.name}.": "rnn."}
            backward_prefix = f"{reverse.name}."
            bidirectional = True
            spec["family"] = "F8"
            settled.append(f"'{forward.name}' forward and '{reverse.name}' over the flipped input: a BiLSTM by hand")
        desc = f"'{main.name}': {type(m).__name__}, {m.num_layers} layer(s), hidden {m.hidden_size}"
        desc += ", bidirectional" if bidirectional else ""
        desc += f", proj_size {proj}" if proj else ""
        settled.append(desc)
    spec["bidirectional"] = bidirectional
    # After the recurrent layer: a LayerNorm per step, the readout, the head.
    post = [c for c in post if not isinstance(c.module, POOLS)]
    post = [Call(c.name, c.module, (_squeeze(c.inputs[0]),), _squeeze(c.output)) for c in post]
    if post and isinstance(post[0].module, nn.LayerNorm) and post[0].inputs[0].ndim == 2:
        norm = post.pop(0)
        if not _close(norm.inputs[0], seq):
            raise NotSettled(f"'{norm.name}' (LayerNorm) reads something other than the recurrent output")
        spec["layer_norm"] = True
        if norm.module.eps != 1e-5:
            spec["layer_norm_eps"] = float(norm.module.eps)
        renames.update({f"{norm.name}.weight": "norm.weight", f"{norm.name}.bias": "norm.bias"})
        seq = _squeeze(norm.output)
        settled.append(f"'{norm.name}': LayerNorm over each step of the recurrent output")
    readouts = _readouts(seq, h_n, bidirectional, encoded)
    active = [c for c in post if _layer(c) not in ("dropout", "identity")]
    final_activation = None
    if active and isinstance(active[-1].module, (nn.Softmax, nn.LogSoftmax)) and active[-1] is post[-1]:
        final_activation = "softmax" if isinstance(active[-1].module, nn.Softmax) else "log_softmax"
        post = post[:-1]
    if post:
        head_in = post[0].inputs[0]
        readout, pre_act = _match_readout(readouts, head_in, post[0].name)
        chain_start = readouts[readout]
        head_calls = post
        head_layers, head_renames, y, notes = _chain(head_calls, chain_start, "after the recurrent layer", "head")
        del pre_act  # _chain finds it again and puts it first
        if head_layers[-1] == "sigmoid" and final_activation is None:
            head_layers.pop()  # served as the output activation, the same computation
            final_activation, y = "sigmoid", torch.logit(y.double()).float()
        renames.update(head_renames)
        settled += notes
        settled.append(f"head {head_layers} ({', '.join(c.name for c in head_calls)})")
    else:
        readout, y, head_layers = "", torch.empty(0), []
    out = _squeeze(answer)
    if not post:
        readout, act = _match_answer_readout(readouts, out)
        y = readouts[readout]
        spec["output_activation"] = act
    else:
        act = _output_activation(y, out, final_activation)
        spec["output_activation"] = act
    base_readout, _, concat = readout.partition("+")
    spec["readout"] = base_readout
    if concat:
        spec["concat_input_mean"] = True
    spec["head_layers"] = head_layers
    settled.append(
        f"readout: {_READOUTS[base_readout]}"
        + (", concatenated with the mean over time of the recurrent layer's input" if concat else "")
    )
    if spec["output_activation"] != "none":
        settled.append(f"the module applies {spec['output_activation']} to its answer")
    width = int(y.shape[-1])
    if base_readout == "all":
        # A head of one output per step answers a value per step (regression), not a tag over one label.
        spec["task"] = "tagging" if head_layers and width > 1 else "regression"
    elif not head_layers:
        spec["task"] = "regression"
    else:
        spec["task"] = "regression" if width == 1 else "classification"
    spec["num_outputs"] = width
    if spec["task"] in ("classification", "tagging"):
        spec["labels"] = [f"class_{i}" for i in range(width)]
    settled.append(
        {
            "classification": f"task: classification over {width} labels (softmax of the answer unless it is "
            "one already)",
            "tagging": f"task: a tag per step over {width} labels",
            "regression": f"answer: {width} value(s)"
            + (" per step" if base_readout == "all" else "")
            + ("" if head_layers else " (no head: the recurrent features themselves)"),
        }[spec["task"]]
    )
    spec["names"] = {"prefixes": prefixes, "renames": renames, "backward": backward_prefix, "ignore": []}
    if "family" not in spec:
        spec["family"] = _family(spec, cell_form)
    return spec, settled


def _family(spec: dict[str, Any], cell_form: bool) -> str | None:
    """The family name for the record (F8 and F9 are set where found); ``None`` when none fits."""
    if cell_form:
        family = "F7"
    elif spec.get("proj_size"):
        family = "F6"
    elif spec["readout"] == "all":
        family = "F5"
    elif spec.get("input_kind") == "text":
        family = "F4"
    elif spec["cell"] == "gru":
        family = "F3"
    else:
        family = "F1" if spec["bidirectional"] else "F2"
    needs = {"F4": {"cell": "lstm"}, "F5": {"task": "tagging"}, "F7": {"cell": "lstm"}}
    if any(spec.get(k) != v for k, v in needs.get(family, {}).items()):
        return None
    return family


_READOUTS = {
    "last": "the last step's output (out[:, -1])",
    "final": "the final states (h_n: forward at the last step, backward at the first)",
    "mean": "the mean over time",
    "max": "the max over time",
    "all": "every step",
}


def _squeeze(t: Any) -> Any:
    """Drop the batch axis of one sequence's tensor (``[1, ...]`` or time-major ``[T, 1, ...]``)."""
    if isinstance(t, tuple):
        t = t[0]
    if not isinstance(t, Tensor):
        return t
    if t.ndim >= 2 and t.shape[0] == 1:
        return t[0]
    if t.ndim == 3 and t.shape[1] == 1:
        return t[:, 0]
    return t


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or _layer_kind_unknown(module)


def _layer_kind_unknown(module: nn.Module) -> bool:
    return not isinstance(module, (*POOLS, *ACTIVATION_MODULES, nn.LeakyReLU, nn.Softmax, nn.LogSoftmax))


def _match_readout(readouts: dict[str, Tensor], given: Tensor, name: str) -> tuple[str, str]:
    for readout, value in readouts.items():
        between = _activation_between(value, given) if value.shape == given.shape else None
        if between is not None:
            return readout, between
    shown = list(given.shape)
    raise NotSettled(
        f"'{name}' reads a {shown} tensor that is none of the readouts seqserve has ({', '.join(_READOUTS)}, "
        "optionally with the input's mean) of the recurrent output"
    )


def _match_answer_readout(readouts: dict[str, Tensor], answer: Tensor) -> tuple[str, str]:
    for readout, value in readouts.items():
        for act, fn in OUTPUTS.items():
            if value.shape == answer.shape and _close(fn(value), answer):
                return readout, act
    raise NotSettled(f"the module's answer ({list(answer.shape)}) is none of the readouts of the recurrent output")


def _output_activation(y: Tensor, answer: Tensor, module_activation: str | None) -> str:
    if answer.shape != y.shape and answer.numel() == y.numel():
        answer = answer.reshape(y.shape)
    if module_activation is not None and _close(OUTPUTS[module_activation](y), answer):
        return module_activation
    for act, fn in OUTPUTS.items():
        if answer.shape == y.shape and _close(fn(y), answer):
            return act
    raise NotSettled(
        f"the module's answer ({list(answer.shape)}) is not the head's output ({list(y.shape)}), "
        "nor its softmax, log_softmax or sigmoid: something runs after the head"
    )


# --- checking the settled spec -----------------------------------------------------------------


def complete_spec(
    settled: Settled, name: str, max_length: int, tokenizer: Tokenizer | None, given: Mapping[str, Any] | None = None
) -> ModelSpec:
    """The settled wiring plus what settling cannot know, with the user's own fields over it."""
    assert settled.spec is not None
    data = dict(settled.spec)
    data.setdefault("name", name)
    data.setdefault("max_length", max_length)
    if data.get("input_kind") == "text":
        data["tokenizer"] = _tokenizer_dict(tokenizer or _placeholder_tokenizer(settled))
        rows = settled.vocabulary_size or 0
        vocabulary = data["tokenizer"]["vocabulary"]
        # NOTE: embedding rows past the vocabulary get "", a token no text produces.
        data["tokenizer"]["vocabulary"] = vocabulary + [""] * (rows - len(vocabulary))
    for key, value in (given or {}).items():
        data[key] = value
    if data.get("task") in ("classification", "tagging") and data.get("labels") is None:
        data["labels"] = [f"class_{i}" for i in range(int(data["num_outputs"]))]
    if data.get("task") == "regression":
        data.pop("labels", None)
    try:
        return ModelSpec.from_dict(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise SpecError(str(exc)) from None


def _placeholder_tokenizer(settled: Settled) -> Tokenizer:
    """Only for checking the wiring: ids are ids. Text models are exported with the user's vocabulary."""
    size = settled.vocabulary_size or 2
    return Tokenizer(
        vocabulary=tuple(f"<{i}>" for i in range(size)),
        lowercase=False,
        padding_id=settled.padding_idx or 0,
        unknown_id=1 if size > 1 else 0,
        type="word",
    )


def _tokenizer_dict(tokenizer: Tokenizer) -> dict[str, Any]:
    return {
        "vocabulary": list(tokenizer.vocabulary),
        "lowercase": tokenizer.lowercase,
        "type": tokenizer.type,
        "padding_id": tokenizer.padding_id,
        "unknown_id": tokenizer.unknown_id,
        "pattern": tokenizer.pattern,
    }


def _verify(
    settled: Settled,
    module: nn.Module,
    state: Mapping[str, Tensor],
    width: int,
    vocabulary: int | None,
    tokenizer: Tokenizer | None,
) -> str | None:
    """``None`` when the settled spec's model answers as the module on sequences of other lengths."""
    from models.checkpoint import CheckpointError, build_model

    try:
        spec = complete_spec(settled, "settling", 16, tokenizer)
        model = build_model(spec, state, source="the checkpoint")
    except (SpecError, CheckpointError) as exc:
        return f"the settled spec does not hold: {exc}"
    assert settled.inputs is not None
    worst = 0.0
    for seed, length in enumerate(CHECK_LENGTHS):
        x = _probe(length, width, vocabulary, 50 + seed)
        with torch.no_grad():
            try:
                want = one_answer(_first(module(*call_args(settled.inputs, x, length))), settled.inputs)
            except NotSettled as exc:
                return f"on a sequence of length {length} the module {exc}"
            got = model(x[None], torch.tensor([length]))[0]
        if want.numel() != got.numel():
            return f"the settled graph answers {list(got.shape)}, the module {list(want.shape)}"
        worst = max(worst, float((want.reshape(got.shape).double() - got.double()).abs().max()))
    if worst > MATCH:
        return f"the settled graph differs from the module by {worst:.2g} (wiring not recognised)"
    return None


# --- NumPy arrays (Cho et al.'s GRU) ----------------------------------------------------------

CHO = re.compile(r"^(?P<kind>[WUb])_?(?P<gate>[zrh])$", re.IGNORECASE)


def _settle_arrays(obj: Any, user: UserModule, state: Mapping[str, Tensor], inputs: str | None = None) -> Settled:
    arrays = {k: v for k, v in vars(obj).items() if isinstance(v, np.ndarray)}
    found: dict[str, str] = {}
    for key in arrays:
        m = CHO.match(key)
        if m:
            found[f"{m['kind'].upper() if m['kind'] != 'b' else 'b'}_{m['gate'].lower()}"] = key
    call = obj if callable(obj) else getattr(obj, "forward", None)
    if call is None or not all(f"{k}_{g}" in found for k in "Wb" for g in "zrh"):
        return Settled(
            None, None, reason=f"arrays without Cho GRU gates (W_z, W_r, W_h, b_z, b_r, b_h): found {sorted(arrays)}"
        )
    w_z = arrays[found["W_z"]]
    hidden = int(arrays[found["b_z"]].shape[0])
    renames = {key: f"rnn.{canonical}" for canonical, key in found.items()}
    if "U_z" in found:
        layout = "x_w" if w_z.shape[1] == hidden and w_z.shape[0] != hidden else "w_x"
        features = int(w_z.shape[1] if layout == "w_x" else w_z.shape[0])
        how = "W @ x + U @ h" if layout == "w_x" else "x @ W + h @ U"
    else:
        layout, features = "concat", int(w_z.shape[1]) - hidden
        how = "one matrix per gate over concat([x, h])"
    rest = [k for k in arrays if k not in renames]
    matrix = next((k for k in rest if arrays[k].ndim == 2), None)
    bias = next((k for k in rest if arrays[k].ndim == 1), None)
    head = matrix is not None
    if head:
        assert matrix is not None
        renames[matrix] = "head.weight"
        if bias is not None:
            renames[bias] = "head.bias"
    outputs = int(arrays[matrix].shape[0 if layout != "x_w" else 1]) if matrix is not None else hidden
    ignore = [k for k in arrays if k not in renames]
    base: dict[str, Any] = {
        "family": "F9",
        "cell": "gru",
        "hidden_size": hidden,
        "input_size": features,
        "readout": "last",
        "array_layout": layout,
        "num_outputs": outputs,
        "names": {"prefixes": {}, "renames": renames, "backward": None, "ignore": ignore},
    }
    if not head:
        base["head_layers"] = []
    settled = [
        f"arrays {', '.join(sorted(found.values()))}: a GRU in Cho et al.'s form ({how}), hidden {hidden}",
        f"head: {matrix} [{outputs}]" if head else "no head: the answer is the final state h",
    ]
    reasons = []
    for mode in [inputs] if inputs is not None else ["sequence", "batch"]:
        for act in OUTPUTS:
            spec = {**base, "output_activation": act}
            if head and outputs > 1:
                spec["task"], spec["labels"] = "classification", [f"class_{i}" for i in range(outputs)]
            else:
                spec["task"] = "regression"
            result = Settled(spec, mode, [f"called as {_MODES[mode]}", *settled], input_size=features)
            problem = _verify_arrays(result, call, state, features, mode)
            if problem is None:
                if act != "none":
                    result.settled.append(f"the module applies {act} to its answer")
                return result
            reasons.append(problem)
    return Settled(None, "sequence", reason=_best_reason(reasons), input_size=features)


def _verify_arrays(settled: Settled, call: Any, state: Mapping[str, Tensor], features: int, mode: str) -> str | None:
    from models.checkpoint import CheckpointError, build_model

    try:
        spec = complete_spec(settled, "settling", 16, None)
        model = build_model(spec, state, source="the arrays")
    except (SpecError, CheckpointError) as exc:
        return f"the settled spec does not hold: {exc}"
    for seed, length in enumerate(CHECK_LENGTHS):
        x = _probe(length, features, None, 50 + seed).double().numpy()
        try:
            want = np.asarray(call(*call_args(mode, x, length, is_torch=False)), dtype=np.float64)
        except Exception as exc:
            return f"called as {mode}: {type(exc).__name__}: {exc}"
        with torch.no_grad():
            got = model(torch.from_numpy(x).float()[None], torch.tensor([length]))[0].double().numpy()
        if want.size != got.size:
            return f"the module answers {list(want.shape)}, the settled graph {list(got.shape)}"
        if float(np.abs(want.reshape(got.shape) - got).max()) > MATCH * 10:
            return "the settled graph differs from the arrays' module"
    return None


def describe(settled: Settled) -> str:
    lines = [f"settled: {line}" for line in settled.settled]
    if settled.reason:
        lines.append(f"not settled: {settled.reason}")
    return "\n".join(lines)
