"""A small, deterministic training loop for ``SequenceModel``s.

Batches are padded mixed-length sequences fed straight to the length-aware
stack, which is exact on them, so training sees what serving sees.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from models.stack import SequenceModel

TRAIN_THREADS = 2
"""Fixed, so a rebuild on another machine takes the same arithmetic path."""


def seed_everything(seed: int) -> None:
    """Seeds and fixed threads: the same weights on every run on one machine. Under
    ``seqserve train --portable`` (``models.cli.TRAIN_ENVIRONMENT`` set before torch loaded) also no
    oneDNN, whose kernels are chosen by the CPU's features and cache sizes with no reproducibility
    mode, so the LSTMs run on PyTorch's plain kernels and MKL's compatible branch on any x86-64 CPU."""
    from models.cli import TRAIN_ENVIRONMENT

    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(TRAIN_THREADS)
    if all(os.environ.get(name) == value for name, value in TRAIN_ENVIRONMENT.items()):
        torch._C._set_mkldnn_enabled(False)  # `torch.backends.mkldnn.enabled = False`, in a form mypy accepts
        capability = torch.backends.cpu.get_cpu_capability()
        if capability.lower() != TRAIN_ENVIRONMENT["ATEN_CPU_CAPABILITY"]:
            warnings.warn(
                f"torch runs its {capability} kernels, not the pinned ones (torch was loaded before they were "
                "pinned): figures may differ on another CPU",
                stacklevel=2,
            )


def pad(sequences: Sequence[np.ndarray], padding_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """``[T_i, ...]`` arrays -> padded ``[B, T, ...]`` tensor and ``[B]`` lengths."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    first = sequences[0]
    out = np.full((len(sequences), int(lengths.max()), *first.shape[1:]), padding_value, dtype=first.dtype)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return torch.from_numpy(out), torch.from_numpy(lengths)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    seed: int = 0


def fit(
    model: SequenceModel,
    sequences: Sequence[np.ndarray],
    targets: np.ndarray,
    config: TrainConfig,
    padding_value: float = 0.0,
    desc: str = "train",
) -> list[float]:
    """Adam on cross-entropy (classification) or MSE (regression); returns the
    mean loss of each epoch."""
    seed_everything(config.seed)
    classification = model.spec.task == "classification"
    loss_fn: nn.Module = nn.CrossEntropyLoss() if classification else nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    target = torch.as_tensor(targets, dtype=torch.int64 if classification else torch.float32)
    if not classification and model.output_mean is not None and model.output_std is not None:
        # Fit in normalised units; the graph scales back.
        target = (target - model.output_mean) / model.output_std
    rng = np.random.default_rng(config.seed)
    history: list[float] = []
    bar = tqdm(range(config.epochs), desc=desc, unit="epoch", mininterval=2.0)
    for _ in bar:
        model.train()
        order = rng.permutation(len(sequences))
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            x, lengths = pad([sequences[i] for i in idx], padding_value)
            y = target[idx]
            out = model.head(model.pool(model.rnn(model.encode(x), lengths), lengths))
            loss = loss_fn(out, y)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        history.append(total / count)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    return history


@torch.no_grad()
def predict(
    model: SequenceModel, sequences: Sequence[np.ndarray], padding_value: float = 0.0, batch_size: int = 256
) -> np.ndarray:
    model.eval()
    outs = []
    for start in range(0, len(sequences), batch_size):
        x, lengths = pad(sequences[start : start + batch_size], padding_value)
        outs.append(model(x, lengths).numpy())
    return np.concatenate(outs)
