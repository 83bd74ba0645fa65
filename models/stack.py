"""The length-aware recurrent stack: exact on padded batches, exportable.

Every direction of every layer is a one-layer ``torch.lstm``/``torch.gru`` call
over the padded batch ``[B, T, F]``. The forward direction is exact on the valid
steps because padding comes after them. The backward direction runs over each
sequence reversed *within its own length* (a gather with ``len-1-t`` for
``t < len``), so it starts at the last real step instead of in the padding, and
its output is reversed back the same way. Readouts gather or mask by length.

This construction exports through the TorchScript-based ONNX exporter
(``dynamo=False``; ``models.export.write_onnx`` says why) into native ONNX
LSTM/GRU ops with dynamic batch and time axes, where ``pack_padded_sequence``
does not.

Parameters are named exactly as in ``nn.LSTM``/``nn.GRU`` (``rnn.weight_ih_l0``,
``rnn.weight_hh_l0_reverse``, ...), so a standard ``state_dict`` loads as is.

An LSTM with projections (``proj_size=P``) runs as a plain LSTM of hidden size
H whose recurrent weight is ``W_hh @ W_hr`` ([4H, P] x [P, H]), its output then
projected by ``W_hr``: the gates only ever see ``h = W_hr m``, so this is the
same computation, and it exports to the native ONNX LSTM op, which has no
projection.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from models.spec import ModelSpec


def reversal_index(lengths: Tensor, steps: int) -> Tensor:
    """``[B, T]`` index that reverses each row within its length and leaves
    padding in place; applying it twice is the identity."""
    t = torch.arange(steps, device=lengths.device).unsqueeze(0)
    n = lengths.unsqueeze(1)
    return torch.where(t < n, n - 1 - t, t)


def gather_steps(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, t], :]`` for ``x`` of shape ``[B, T, F]``."""
    return torch.gather(x, 1, index.unsqueeze(2).expand(-1, -1, x.shape[2]))


def step_at(x: Tensor, position: Tensor) -> Tensor:
    """``x[b, position[b], :]``: ``[B, T, F]`` -> ``[B, F]``."""
    index = position.view(-1, 1, 1).expand(-1, 1, x.shape[2])
    return torch.gather(x, 1, index).squeeze(1)


class LengthAwareRNN(nn.Module):
    """A multi-layer, optionally bidirectional LSTM or GRU over padded batches.

    ``forward(x [B, T, F], lengths [B]) -> out [B, T, D*H]``; steps at or past a
    sequence's length hold unspecified values.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        proj_size: int = 0,
        separate_directions: bool = False,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.dropout = dropout
        self.separate_directions = separate_directions and bidirectional

        # Borrow torch's own parameter names, shapes and initialisation.
        def template(bidirectional: bool) -> nn.RNNBase:
            if cell == "lstm":
                return nn.LSTM(input_size, hidden_size, num_layers, bidirectional=bidirectional, proj_size=proj_size)
            return nn.GRU(input_size, hidden_size, num_layers, bidirectional=bidirectional)

        if self.separate_directions:
            # Two unidirectional stacks (F8): the backward stack's layer k > 0
            # reads only backward outputs, so its weight_ih_l{k} is [G*H, H].
            for suffix in ("", "_reverse"):
                for name, param in template(False).named_parameters():
                    self.register_parameter(name + suffix, nn.Parameter(param.detach().clone()))
        else:
            for name, param in template(bidirectional).named_parameters():
                self.register_parameter(name, nn.Parameter(param.detach().clone()))
        self.output_size = (2 if bidirectional else 1) * (proj_size or hidden_size)

    def _weights(self, layer: int, suffix: str) -> list[Tensor]:
        names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        if self.proj_size:
            names.append("weight_hr")
        return [getattr(self, f"{n}_l{layer}{suffix}") for n in names]

    def _run(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        batch = x.shape[0]
        h0 = torch.zeros(1, batch, self.hidden_size, dtype=x.dtype, device=x.device)
        if self.cell == "lstm":
            c0 = torch.zeros(1, batch, self.hidden_size, dtype=x.dtype, device=x.device)
            if self.proj_size:
                w_ih, w_hh, b_ih, b_hh, w_hr = weights
                out, _, _ = torch.lstm(x, [h0, c0], [w_ih, w_hh @ w_hr, b_ih, b_hh], True, 1, 0.0, False, False, True)
                return out @ w_hr.t()  # [B, T, H] -> [B, T, P]
            out, _, _ = torch.lstm(x, [h0, c0], weights, True, 1, 0.0, False, False, True)
        else:
            out, _ = torch.gru(x, h0, weights, True, 1, 0.0, False, False, True)
        return out

    def _stack(self, x: Tensor, suffix: str) -> Tensor:
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = nn.functional.dropout(x, self.dropout, training=True)
            x = self._run(x, self._weights(layer, suffix))
        return x

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        reverse = reversal_index(lengths, x.shape[1]) if self.bidirectional else None
        if self.separate_directions:
            assert reverse is not None
            backward = self._stack(gather_steps(x, reverse), "_reverse")
            return torch.cat([self._stack(x, ""), gather_steps(backward, reverse)], dim=2)
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = nn.functional.dropout(x, self.dropout, training=True)
            out = self._run(x, self._weights(layer, ""))
            if reverse is not None:
                backward = self._run(gather_steps(x, reverse), self._weights(layer, "_reverse"))
                out = torch.cat([out, gather_steps(backward, reverse)], dim=2)
            x = out
        return x


class SequenceModel(nn.Module):
    """Input encoding -> ``LengthAwareRNN`` -> readout -> head, built from a spec.

    ``forward(x, lengths)``: ``x`` is float32 ``[B, T, F]`` (features) or int64
    ``[B, T]`` token ids (text); ``lengths`` int64 ``[B]``, each >= 1. Returns
    ``[B, O]`` or, for tagging, ``[B, T, O]`` (logits or regression values).
    """

    # Non-persistent buffers, ``None`` when the spec has no normalisation.
    input_mean: Tensor | None
    input_std: Tensor | None
    output_mean: Tensor | None
    output_std: Tensor | None

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.readout = spec.readout
        self.embedding: nn.Embedding | None = None
        if spec.input_kind == "text":
            assert spec.tokenizer is not None and spec.embedding_dim is not None
            self.embedding = nn.Embedding(
                len(spec.tokenizer.vocabulary), spec.embedding_dim, padding_idx=spec.tokenizer.padding_id
            )
        self.input_mlp: nn.Sequential | None = None
        if spec.input_layers:
            self.input_mlp = build_layers(spec.input_layers, spec.rnn_input_size)
        elif spec.input_mlp:
            widths = (spec.rnn_input_size, *spec.input_mlp)
            layers: list[nn.Module] = []
            for width_in, width_out in itertools.pairwise(widths):
                layers += [nn.Linear(width_in, width_out), activation(spec.activation)]
            self.input_mlp = nn.Sequential(*layers)
        self.rnn = LengthAwareRNN(
            spec.cell,
            spec.rnn_input_width,
            spec.hidden_size,
            spec.num_layers,
            spec.bidirectional,
            spec.dropout,
            spec.proj_size,
            spec.separate_directions,
        )
        self.norm = nn.LayerNorm(self.rnn.output_size, eps=spec.layer_norm_eps) if spec.layer_norm else None
        self.concat_input_mean = spec.concat_input_mean
        width = spec.step_size if spec.readout == "all" else spec.pooled_size
        self.head: nn.Module
        if spec.head_layers is not None:
            # The module's own output activation ends the head, so every graph and reference applies it.
            self.head = build_layers(spec.head_layers, width, spec.output_activation)
        elif spec.head_hidden:
            self.head = nn.Sequential(
                nn.Linear(width, spec.head_hidden),
                activation(spec.activation),
                nn.Linear(spec.head_hidden, spec.num_outputs),
            )
        else:
            self.head = nn.Linear(width, spec.num_outputs)
        # Scaling lives in the graph so the server has nothing to get wrong;
        # non-persistent, so checkpoints keep torch's plain parameter names.
        self.register_buffer("input_mean", _vector(spec.input_normalization, "mean"), persistent=False)
        self.register_buffer("input_std", _vector(spec.input_normalization, "std"), persistent=False)
        self.register_buffer("output_mean", _vector(spec.output_normalization, "mean"), persistent=False)
        self.register_buffer("output_std", _vector(spec.output_normalization, "std"), persistent=False)

    def encode(self, x: Tensor) -> Tensor:
        """The RNN's input ``[B, T, F']``: embedded or scaled, then the input MLP."""
        if self.embedding is not None:
            x = self.embedding(x)
        elif self.input_mean is not None and self.input_std is not None:
            x = (x - self.input_mean) / self.input_std
        if self.input_mlp is not None:
            x = self.input_mlp(x)
        return x

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        encoded = self.encode(x)
        out = self.rnn(encoded, lengths)  # [B, T, D*H]
        if self.norm is not None:
            out = self.norm(out)
        pooled = self.pool(out, lengths)
        if self.concat_input_mean:
            pooled = torch.cat([pooled, masked_mean(encoded, lengths)], dim=1)
        y: Tensor = self.head(pooled)
        if self.output_mean is not None and self.output_std is not None:
            y = y * self.output_std + self.output_mean
        return y

    def pool(self, out: Tensor, lengths: Tensor) -> Tensor:
        if self.readout == "last":
            return step_at(out, lengths - 1)
        if self.readout == "final":
            if not self.rnn.bidirectional:
                return step_at(out, lengths - 1)
            half = out.shape[2] // 2
            forward = step_at(out[:, :, :half], lengths - 1)
            return torch.cat([forward, out[:, 0, half:]], dim=1)
        mask = (torch.arange(out.shape[1], device=out.device).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(2)
        if self.readout == "all":
            # Zero the steps past each length: deterministic padding outputs,
            # and the graph keeps its lengths input even when unidirectional.
            return torch.where(mask, out, torch.zeros_like(out))
        if self.readout == "mean":
            return masked_mean(out, lengths)
        return torch.where(mask, out, torch.full_like(out, float("-inf"))).max(dim=1).values


def masked_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Mean over each sequence's valid steps: ``[B, T, F]`` -> ``[B, F]``."""
    mask = (torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(2)
    total = torch.where(mask, x, torch.zeros_like(x)).sum(dim=1)
    return total / lengths.unsqueeze(1).to(x.dtype)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "mish": nn.Mish,
    "hardtanh": nn.Hardtanh,
    "identity": nn.Identity,
    "dropout": nn.Dropout,
}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def build_layers(layers: tuple[str, ...], width: int, output_activation: str = "none") -> nn.Sequential:
    """``nn.Sequential`` of ``layers`` (``models.spec.LAYER_KINDS``) reading ``width``;
    indices follow the list, so a user's ``nn.Sequential`` of the same layers
    keeps its parameter names. ``output_activation`` is appended last."""
    modules: list[nn.Module] = []
    for layer in layers:
        kind, _, rest = layer.partition(":")
        if kind == "linear":
            size, _, bias = rest.partition(":")
            modules.append(nn.Linear(width, int(size), bias=bias != "nobias"))
            width = int(size)
        elif kind == "layernorm":
            modules.append(nn.LayerNorm(width, eps=float(rest) if rest else 1e-5))
        elif kind == "leaky_relu":
            modules.append(nn.LeakyReLU(float(rest) if rest else 0.01))
        else:
            modules.append(activation(kind))
    if output_activation == "softmax":
        modules.append(nn.Softmax(dim=-1))
    elif output_activation == "log_softmax":
        modules.append(nn.LogSoftmax(dim=-1))
    elif output_activation == "sigmoid":
        modules.append(nn.Sigmoid())
    return nn.Sequential(*modules)


def _vector(norm: object, attr: str) -> Tensor | None:
    if norm is None:
        return None
    return torch.tensor(getattr(norm, attr), dtype=torch.float32)
