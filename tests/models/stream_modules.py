"""Users' unidirectional model classes, written the way tutorials write them, for the
readouts ``tutorial.py`` has only in bidirectional form (a tagger, projections) or
not at all (mean and max pooling over time). seqserve imports this file from its
path, as it would a user's ``model.py``; it needs nothing from seqserve."""

from __future__ import annotations

from torch import Tensor, nn


class LSTMTagger(nn.Module):
    """F5, one direction: a tag per step."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, num_tags: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.hidden2tag = nn.Linear(hidden_size, num_tags)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.hidden2tag(out)


class ProjectedLSTMForecaster(nn.Module):
    """F6, one direction: ``nn.LSTM(proj_size=P)`` and ``fc(out[:, -1, :])``."""

    def __init__(self, input_size: int, hidden_size: int, proj_size: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, proj_size=proj_size)
        self.fc = nn.Linear(proj_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


class PooledRNN(nn.Module):
    """An LSTM or GRU pooled over time, ``out.mean(dim=1)`` or ``out.max(dim=1)``."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_classes: int, pool: str) -> None:
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(input_size, hidden_size, batch_first=True)
        self.pool = pool
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        pooled = out.mean(dim=1) if self.pool == "mean" else out.max(dim=1).values
        return self.fc(pooled)
