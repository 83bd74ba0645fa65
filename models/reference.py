"""The plain, tutorial-style module a ``SequenceModel`` must agree with.

It is built from stock ``nn.LSTM``/``nn.GRU`` and is only ever run on one
unpadded sequence at a time, so nothing in it can be fooled by padding. Parity
checks compare every exported graph, run on padded mixed-length batches,
against it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.spec import ModelSpec
from models.stack import SequenceModel


class ReferenceModel(nn.Module):
    """``forward(x [1, T, ...]) -> [1, O]`` or ``[1, T, O]``; batch of one, no padding."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        spec: ModelSpec = model.spec
        self.spec = spec
        rnn_cls = nn.LSTM if spec.cell == "lstm" else nn.GRU
        kwargs = {"proj_size": spec.proj_size} if spec.proj_size else {}
        self.rnn = rnn_cls(
            spec.rnn_input_size,
            spec.hidden_size,
            spec.num_layers,
            batch_first=True,
            bidirectional=spec.bidirectional,
            **kwargs,
        )
        self.rnn.load_state_dict(model.rnn.state_dict())
        self.model = model  # embedding, scaling and head are shared, not re-derived
        self.eval()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        spec = self.spec
        out, state = self.rnn(self.model.encode(x))
        h_n = state[0] if isinstance(state, tuple) else state
        if spec.readout == "all":
            pooled = out
        elif spec.readout == "last":
            pooled = out[:, -1, :]
        elif spec.readout == "final":
            pooled = torch.cat([h_n[-2], h_n[-1]], dim=1) if spec.bidirectional else h_n[-1]
        elif spec.readout == "mean":
            pooled = out.mean(dim=1)
        else:
            pooled = out.max(dim=1).values
        y = self.model.head(pooled)
        if self.model.output_mean is not None and self.model.output_std is not None:
            y = y * self.model.output_std + self.model.output_mean
        return y
