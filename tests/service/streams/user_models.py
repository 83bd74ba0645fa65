"""A user's own ``model.py`` for shapes the shared tutorial modules lack in one direction: an encoder that
answers its recurrent features at every step (no head). seqserve imports this file from its path."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SequenceEncoder(nn.Module):
    """A stacked GRU whose answer is its output at every step: features per step, no head."""

    def __init__(self, input_size: int = 3, hidden_size: int = 4, num_layers: int = 2) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers=num_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.gru(x)
        return out


class SoftmaxClassifier(nn.Module):
    """A GRU classifier whose head ends in ``nn.Softmax``: it answers probabilities itself."""

    def __init__(self, input_size: int = 3, hidden_size: int = 5, num_classes: int = 3) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden_size, num_classes), nn.Softmax(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        _, h_n = self.gru(x)
        return self.head(h_n[-1])


class SigmoidDetector(nn.Module):
    """An LSTM event detector: the probability of an event, ``torch.sigmoid`` of one logit."""

    def __init__(self, input_size: int = 3, hidden_size: int = 5) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return torch.sigmoid(self.fc(out[:, -1, :]))


class StepForecaster(nn.Module):
    """An LSTM that forecasts one value at every step, ``fc(out)`` with one output: a value per step, not a tag."""

    def __init__(self, input_size: int = 3, hidden_size: int = 5) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.fc(out)
