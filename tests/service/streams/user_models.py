"""A user's own ``model.py`` for shapes the shared tutorial modules lack in one direction: an encoder that
answers its recurrent features at every step (no head). seqserve imports this file from its path."""

from __future__ import annotations

from torch import Tensor, nn


class SequenceEncoder(nn.Module):
    """A stacked GRU whose answer is its output at every step: features per step, no head."""

    def __init__(self, input_size: int = 3, hidden_size: int = 4, num_layers: int = 2) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers=num_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.gru(x)
        return out
