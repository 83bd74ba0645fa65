"""Users' modules written for the zero-spec export, each in the shape a popular
tutorial uses, quirks kept: nothing here is shaped for seqserve, and seqserve
imports this file from its path as it would a user's ``model.py``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TextClassifier(nn.Module):
    """Embedding -> Linear, GELU, Linear -> 3-layer LSTM (dropout 0.5) over a packed
    batch -> LayerNorm -> AdaptiveAvgPool1d over time of the RNN output and of
    the MLP output -> concat -> Linear, GELU, LayerNorm, Linear."""

    def __init__(
        self, vocab_size: int, embed_dim: int = 8, mlp_dim: int = 6, hidden: int = 5, n_classes: int = 3
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.input_mlp = nn.Sequential(nn.Linear(embed_dim, 12), nn.GELU(), nn.Linear(12, mlp_dim))
        self.rnn = nn.LSTM(mlp_dim, hidden, num_layers=3, dropout=0.5, batch_first=True)
        self.ln = nn.LayerNorm(hidden)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Sequential(
            nn.Linear(hidden + mlp_dim, 7), nn.GELU(), nn.LayerNorm(7), nn.Linear(7, n_classes)
        )

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        emb = self.input_mlp(self.embed(x))
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)
        out = self.ln(out)
        rnn_feat = self.pool(out.permute(0, 2, 1)).squeeze(-1)
        mlp_feat = self.pool(emb.permute(0, 2, 1)).squeeze(-1)
        return self.classifier(torch.cat([rnn_feat, mlp_feat], dim=1))


class FlipBiLSTMFeatures(nn.Module):
    """A BiLSTM from two LSTMs and torch.flip, no head: features per step."""

    def __init__(self, input_dim: int = 4, hidden_dim: int = 6) -> None:
        super().__init__()
        self.forward_lstm = nn.LSTM(input_dim, hidden_dim, batch_first=True)
        self.backward_lstm = nn.LSTM(input_dim, hidden_dim, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        out_forward, _ = self.forward_lstm(x)
        out_backward, _ = self.backward_lstm(torch.flip(x, [1]))
        return torch.cat([out_forward, torch.flip(out_backward, [1])], -1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class ChoGRUConcat:
    """The GRU of Cho et al. in NumPy, one matrix per gate over concat([x, h]); answer = final h."""

    def __init__(self, input_size: int = 3, hidden_size: int = 5, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        n = input_size + hidden_size
        self.hidden_size = hidden_size
        self.W_z = rng.normal(0, 0.5, (hidden_size, n))
        self.W_r = rng.normal(0, 0.5, (hidden_size, n))
        self.W_h = rng.normal(0, 0.5, (hidden_size, n))
        self.b_z = rng.normal(0, 0.2, hidden_size)
        self.b_r = rng.normal(0, 0.2, hidden_size)
        self.b_h = rng.normal(0, 0.2, hidden_size)

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        h = np.zeros(self.hidden_size)
        for x in inputs:
            z = sigmoid(self.W_z @ np.concatenate([x, h]) + self.b_z)
            r = sigmoid(self.W_r @ np.concatenate([x, h]) + self.b_r)
            h_hat = np.tanh(self.W_h @ np.concatenate([x, r * h]) + self.b_h)
            h = (1 - z) * h + z * h_hat
        return h

    def save(self, path: str) -> None:
        np.savez(path, W_z=self.W_z, W_r=self.W_r, W_h=self.W_h, b_z=self.b_z, b_r=self.b_r, b_h=self.b_h)


class TimeMajorCell(nn.Module):
    """The PyTorch docs' LSTMCell loop: input [time, batch, features], a Linear on the last hx."""

    def __init__(self, input_size: int = 4, hidden_size: int = 6, output_size: int = 2) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.rnn = nn.LSTMCell(input_size, hidden_size)
        self.out = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        hx = torch.zeros(x.size(1), self.hidden_size)
        cx = torch.zeros(x.size(1), self.hidden_size)
        for i in range(x.size(0)):
            hx, cx = self.rnn(x[i], (hx, cx))
        return self.out(hx)


class LogSoftmaxGRU(nn.Module):
    """A GRU classifier ending in log_softmax (for NLLLoss), with F.relu between its Linears."""

    def __init__(self, input_size: int = 3, hidden_size: int = 6, n_classes: int = 4) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.fc1 = nn.Linear(hidden_size, 8)
        self.fc2 = nn.Linear(8, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        out, h = self.gru(x)
        return F.log_softmax(self.fc2(F.relu(self.fc1(h[-1]))), dim=1)


class AttentionLSTM(nn.Module):
    """An LSTM with self-attention over its outputs: fits no family."""

    def __init__(self, input_size: int = 3, hidden_size: int = 8, n_classes: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.attn = nn.MultiheadAttention(hidden_size, num_heads=2, batch_first=True)
        self.fc = nn.Linear(hidden_size, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        attended, _ = self.attn(out, out, out)
        return self.fc(attended.mean(dim=1))


class Forecaster(nn.Module):
    """A forecaster as the blog posts write it: states built on a module-level `device`."""

    def __init__(self, input_size: int = 2, hidden_size: int = 6, num_layers: int = 2) -> None:
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        h0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size).to(device)
        c0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size).to(device)
        out, _ = self.lstm(x, (h0, c0))
        return self.fc(out[:, -1, :])


class LSTMTagger(nn.Module):
    """The PyTorch sequence-models tutorial's tagger: one unbatched sentence of token ids,
    a time-major ``nn.LSTM``, a tag score per word through ``log_softmax``."""

    def __init__(self, embedding_dim: int = 6, hidden_dim: int = 6, vocab_size: int = 12, tagset_size: int = 3) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.word_embeddings = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim)
        self.hidden2tag = nn.Linear(hidden_dim, tagset_size)

    def forward(self, sentence: Tensor) -> Tensor:
        embeds = self.word_embeddings(sentence)
        lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
        tag_space = self.hidden2tag(lstm_out.view(len(sentence), -1))
        tag_scores = F.log_softmax(tag_space, dim=1)
        return tag_scores
