"""The length-aware recurrent stack: exact on padded batches, exportable.

Every direction of every layer is a one-layer ``torch.lstm``/``torch.gru`` call
over the padded batch ``[B, T, F]``. The forward direction is exact on the valid
steps because padding comes after them. The backward direction runs over each
sequence reversed *within its own length* (a gather with ``len-1-t`` for
``t < len``), so it starts at the last real step instead of in the padding, and
its output is reversed back the same way. Readouts gather or mask by length.

This construction exports with ``torch.onnx.export(dynamo=True)`` into native
ONNX LSTM/GRU ops with dynamic batch and time axes, where
``pack_padded_sequence`` does not.

Parameters are named exactly as in ``nn.LSTM``/``nn.GRU`` (``rnn.weight_ih_l0``,
``rnn.weight_hh_l0_reverse``, ...), so a standard ``state_dict`` loads as is.
"""

from __future__ import annotations

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
    ) -> None:
        super().__init__()
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.dropout = dropout
        # Borrow torch's own parameter names, shapes and initialisation.
        if cell == "lstm":
            template: nn.RNNBase = nn.LSTM(
                input_size, hidden_size, num_layers, bidirectional=bidirectional, proj_size=proj_size
            )
        else:
            template = nn.GRU(input_size, hidden_size, num_layers, bidirectional=bidirectional)
        for name, param in template.named_parameters():
            self.register_parameter(name, nn.Parameter(param.detach().clone()))
        self.output_size = (2 if bidirectional else 1) * (proj_size or hidden_size)

    def _weights(self, layer: int, suffix: str) -> list[Tensor]:
        names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        if self.proj_size:
            names.append("weight_hr")
        return [getattr(self, f"{n}_l{layer}{suffix}") for n in names]

    def _run(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        batch = x.shape[0]
        state_size = self.proj_size or self.hidden_size
        h0 = torch.zeros(1, batch, state_size, dtype=x.dtype, device=x.device)
        if self.cell == "lstm":
            c0 = torch.zeros(1, batch, self.hidden_size, dtype=x.dtype, device=x.device)
            out, _, _ = torch.lstm(x, [h0, c0], weights, True, 1, 0.0, False, False, True)
        else:
            out, _ = torch.gru(x, h0, weights, True, 1, 0.0, False, False, True)
        return out

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        reverse = reversal_index(lengths, x.shape[1]) if self.bidirectional else None
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
        self.rnn = LengthAwareRNN(
            spec.cell,
            spec.rnn_input_size,
            spec.hidden_size,
            spec.num_layers,
            spec.bidirectional,
            spec.dropout,
            spec.proj_size,
        )
        width = self.rnn.output_size
        if spec.head_hidden:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(width, spec.head_hidden), nn.ReLU(), nn.Linear(spec.head_hidden, spec.num_outputs)
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
        if self.embedding is not None:
            return self.embedding(x)
        if self.input_mean is not None and self.input_std is not None:
            return (x - self.input_mean) / self.input_std
        return x

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        out = self.rnn(self.encode(x), lengths)  # [B, T, D*H]
        pooled = self.pool(out, lengths)
        y = self.head(pooled)
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
            total = torch.where(mask, out, torch.zeros_like(out)).sum(dim=1)
            return total / lengths.unsqueeze(1).to(out.dtype)
        return torch.where(mask, out, torch.full_like(out, float("-inf"))).max(dim=1).values


def _vector(norm: object, attr: str) -> Tensor | None:
    if norm is None:
        return None
    return torch.tensor(getattr(norm, attr), dtype=torch.float32)
