"""Users' own model classes, one per family (F1-F9 of ``models.spec.FAMILIES``), written the way
the common tutorials and blog posts write them, traps included. seqserve
imports this file from its path, as it would a user's ``model.py``; it needs
nothing from seqserve."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class BiLSTMClassifier(nn.Module):
    """F1. Trap: ``out[:, -1, :]`` reads padding in a padded batch, and its
    backward half is the backward output at the last step, not ``h_n``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, num_classes: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(hidden_size * 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h0 = torch.zeros(self.num_layers * 2, x.size(0), self.hidden_size)
        c0 = torch.zeros(self.num_layers * 2, x.size(0), self.hidden_size)
        out, _ = self.lstm(x, (h0, c0))
        return self.fc(out[:, -1, :])


class LSTMForecaster(nn.Module):
    """F2: the next value of a series from a window of past values."""

    def __init__(self, input_size: int = 1, hidden_size: int = 16, num_layers: int = 2, output_size: int = 1) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, dropout=0.2)
        self.linear = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.linear(out[:, -1, :])


class GRUClassifier(nn.Module):
    """F3: reads the final hidden states, ``cat(h_n[-2], h_n[-1])`` when bidirectional."""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int, num_classes: int, bidirectional: bool = True
    ) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.gru = nn.GRU(input_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional)
        self.classifier = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _, h_n = self.gru(x)
        h = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.bidirectional else h_n[-1]
        return self.classifier(h)


class TextClassifier(nn.Module):
    """F4: embedding -> MLP -> packed multi-layer BiLSTM -> LayerNorm -> masked
    mean, concatenated with the masked mean of the MLP output -> MLP head."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        mlp_dim: int,
        hidden_size: int,
        num_layers: int,
        num_classes: int,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, mlp_dim), nn.ReLU(), nn.Dropout(dropout))
        self.lstm = nn.LSTM(mlp_dim, hidden_size, num_layers, batch_first=True, dropout=dropout, bidirectional=True)
        self.norm = nn.LayerNorm(2 * hidden_size)
        self.head = nn.Sequential(
            nn.Linear(2 * hidden_size + mlp_dim, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        e = self.mlp(self.embedding(tokens))
        packed = pack_padded_sequence(e, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.size(1))
        out = self.norm(out)
        mask = (torch.arange(tokens.size(1))[None, :] < lengths[:, None]).unsqueeze(2).float()
        pooled = (out * mask).sum(dim=1) / lengths[:, None]
        mlp_mean = (e * mask).sum(dim=1) / lengths[:, None]
        return self.head(torch.cat([pooled, mlp_mean], dim=1))


class PooledTextClassifier(TextClassifier):
    """F4 with the ``AdaptiveAvgPool1d`` trap: right alone, averages the padding in
    a padded batch. Same parameters (the pool has none), no lengths."""

    def __init__(self, *args: int, **kwargs: float) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.pool = nn.AdaptiveAvgPool1d(1)

    def forward(self, tokens: Tensor) -> Tensor:  # type: ignore[override]
        e = self.mlp(self.embedding(tokens))
        out, _ = self.lstm(e)
        out = self.norm(out)
        pooled = self.pool(out.transpose(1, 2)).squeeze(2)
        mlp_mean = self.pool(e.transpose(1, 2)).squeeze(2)
        return self.head(torch.cat([pooled, mlp_mean], dim=1))


class BiLSTMTagger(nn.Module):
    """F5: a tag per step (Keras ``return_sequences=True``)."""

    def __init__(self, input_size: int, hidden_size: int, num_tags: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=True)
        self.hidden2tag = nn.Linear(2 * hidden_size, num_tags)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.hidden2tag(out)


class ProjectedLSTM(nn.Module):
    """F6: ``nn.LSTM(proj_size=P)``, stacked and bidirectional."""

    def __init__(self, input_size: int, hidden_size: int, proj_size: int, num_layers: int, num_classes: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size, hidden_size, num_layers, batch_first=True, bidirectional=True, proj_size=proj_size
        )
        self.fc = nn.Linear(2 * proj_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


class LSTMCellLoop(nn.Module):
    """F7: a Python loop over ``nn.LSTMCell``."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.zeros(x.size(0), self.hidden_size)
        c = torch.zeros(x.size(0), self.hidden_size)
        for t in range(x.size(1)):
            h, c = self.cell(x[:, t, :], (h, c))
        return self.fc(h)


class FlipBiLSTM(nn.Module):
    """F8: a BiLSTM from two ``nn.LSTM``s and ``torch.flip``. Trap: flipping a
    padded batch starts the backward LSTM in the padding. With num_layers > 1
    each LSTM is its own stack."""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int, num_classes: int, per_step: bool = False
    ) -> None:
        super().__init__()
        self.per_step = per_step
        self.lstm_fwd = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.lstm_bwd = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out_f, _ = self.lstm_fwd(x)
        out_b, _ = self.lstm_bwd(torch.flip(x, dims=[1]))
        out = torch.cat([out_f, torch.flip(out_b, dims=[1])], dim=2)
        return self.fc(out) if self.per_step else self.fc(out[:, -1, :])


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-a))


class ChoGRU:
    """F9: the GRU of Cho et al. (2014), in NumPy, the way blog posts write it:
    the reset gate applied to h before the matrix product, and
    ``h = (1 - z) * h_prev + z * h_hat``."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        s = 1 / np.sqrt(hidden_size)
        self.hidden_size = hidden_size
        self.W_z, self.U_z, self.b_z = (
            rng.uniform(-s, s, (hidden_size, input_size)),
            rng.uniform(-s, s, (hidden_size, hidden_size)),
            np.zeros(hidden_size),
        )
        self.W_r, self.U_r, self.b_r = (
            rng.uniform(-s, s, (hidden_size, input_size)),
            rng.uniform(-s, s, (hidden_size, hidden_size)),
            np.zeros(hidden_size),
        )
        self.W_h, self.U_h, self.b_h = (
            rng.uniform(-s, s, (hidden_size, input_size)),
            rng.uniform(-s, s, (hidden_size, hidden_size)),
            np.zeros(hidden_size),
        )
        self.W_y, self.b_y = rng.uniform(-s, s, (num_classes, hidden_size)), np.zeros(num_classes)

    def forward(self, xs: np.ndarray) -> np.ndarray:
        h = np.zeros(self.hidden_size)
        for x in xs:
            z = sigmoid(self.W_z @ x + self.U_z @ h + self.b_z)
            r = sigmoid(self.W_r @ x + self.U_r @ h + self.b_r)
            h_hat = np.tanh(self.W_h @ x + self.U_h @ (r * h) + self.b_h)
            h = (1 - z) * h + z * h_hat
        return self.W_y @ h + self.b_y

    def params(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in vars(self).items() if isinstance(v, np.ndarray)}
