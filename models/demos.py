"""The demo models: real data that ships inside packages, fixed seeds,
held-out metrics beside a trivial baseline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from models import data
from models.spec import ModelSpec, Normalization, Tokenizer
from models.stack import SequenceModel
from models.train import TrainConfig, fit, predict, seed_everything

SEED = 0


@dataclass(frozen=True)
class Demo:
    name: str
    build: Callable[[bool], SequenceModel]
    """``build(quick)`` trains and returns the model with metrics in its spec."""


def _accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == targets).mean())


def vowels(quick: bool = False) -> SequenceModel:
    """BiLSTM speaker classifier on JapaneseVowels, read out at the last valid
    step the way ``fc(out[:, -1, :])`` reads an unpadded sequence."""
    seed_everything(SEED)
    train, test, labels = data.japanese_vowels()
    frames = np.concatenate(train.sequences)
    spec = ModelSpec(
        name="vowels",
        task="classification",
        cell="lstm",
        bidirectional=True,
        num_layers=2,
        hidden_size=64,
        dropout=0.2,
        input_size=12,
        readout="last",
        num_outputs=len(labels),
        labels=tuple(labels),
        max_length=64,
        input_normalization=Normalization(
            tuple(frames.mean(axis=0).tolist()), tuple((frames.std(axis=0) + 1e-6).tolist())
        ),
        description="Speaker of a Japanese /ae/ vowel from 12 LPC cepstrum coefficients per frame "
        "(JapaneseVowels, shipped with sktime).",
    )
    model = SequenceModel(spec)
    fit(
        model,
        train.sequences,
        train.targets,
        TrainConfig(epochs=3 if quick else 60, batch_size=32, lr=3e-3),
        desc="vowels",
    )
    accuracy = _accuracy(predict(model, test.sequences), test.targets)
    majority = np.bincount(train.targets).argmax()
    metrics = {
        "split": f"the data set's own: {len(train.sequences)} train / {len(test.sequences)} held-out test",
        "held_out": {"accuracy": round(accuracy, 4)},
        "baseline": {"name": "majority class", "accuracy": round(float((test.targets == majority).mean()), 4)},
    }
    model.spec = replace(spec, metrics=metrics)
    return model


def names(quick: bool = False) -> SequenceModel:
    """Character-level BiLSTM: first name -> female / male."""
    seed_everything(SEED)
    pairs = data.first_names()
    labels = ("female", "male")
    test = [(n, g) for n, g in pairs if data.stable_fraction(n) < 0.15]
    train = [(n, g) for n, g in pairs if data.stable_fraction(n) >= 0.15]
    if quick:
        train = train[::20]
    tokenizer = Tokenizer.build([n for n, _ in train], min_count=5)
    spec = ModelSpec(
        name="names",
        task="classification",
        cell="lstm",
        bidirectional=True,
        num_layers=1,
        hidden_size=64,
        input_kind="text",
        embedding_dim=32,
        tokenizer=tokenizer,
        readout="final",
        num_outputs=2,
        labels=labels,
        max_length=32,
        head_hidden=64,
        description="Gender usually given to a first name, read character by character "
        "(gender-guesser's name dictionary; unisex names left out).",
    )

    def encode(rows: list[tuple[str, str]]) -> tuple[list[np.ndarray], np.ndarray]:
        seqs = [np.asarray(tokenizer.encode(n), dtype=np.int64) for n, _ in rows]
        return seqs, np.asarray([labels.index(g) for _, g in rows])

    train_x, train_y = encode(train)
    test_x, test_y = encode(test)
    model = SequenceModel(spec)
    fit(model, train_x, train_y, TrainConfig(epochs=1 if quick else 6, batch_size=128, lr=5e-3), desc="names")
    accuracy = _accuracy(predict(model, test_x), test_y)
    majority = np.bincount(train_y).argmax()
    metrics = {
        "split": f"by a hash of the name: {len(train)} train / {len(test)} held-out",
        "held_out": {"accuracy": round(accuracy, 4)},
        "baseline": {"name": "majority class", "accuracy": round(float((test_y == majority).mean()), 4)},
    }
    model.spec = replace(spec, metrics=metrics)
    return model


def sunspots(quick: bool = False) -> SequenceModel:
    """LSTM forecaster: the last 8-40 years of sunspot numbers -> next year's."""
    seed_everything(SEED)
    years, values = data.sunspots()
    cutoff = 1950  # train on targets before, test on targets from this year on
    rng = np.random.default_rng(0)

    def windows(first_target: int, last_target: int, fixed: int | None) -> tuple[list[np.ndarray], np.ndarray]:
        seqs, targets = [], []
        for t in range(len(values)):
            if not first_target <= years[t] <= last_target or t < 40:
                continue
            for length in [fixed] if fixed else rng.integers(8, 41, size=4):
                seqs.append(values[t - length : t].reshape(-1, 1))
                targets.append([values[t]])
        return seqs, np.asarray(targets, dtype=np.float32)

    train_x, train_y = windows(0, cutoff - 1, None)
    test_x, test_y = windows(cutoff, 9999, 24)
    history = values[years < cutoff]
    spec = ModelSpec(
        name="sunspots",
        task="regression",
        cell="lstm",
        bidirectional=False,
        num_layers=1,
        hidden_size=48,
        input_size=1,
        readout="last",
        num_outputs=1,
        output_names=("sunspots_next_year",),
        max_length=128,
        input_normalization=Normalization((float(history.mean()),), (float(history.std()),)),
        output_normalization=Normalization((float(history.mean()),), (float(history.std()),)),
        description="Next year's mean sunspot number from the previous years' (statsmodels' yearly series 1700-2008).",
    )
    model = SequenceModel(spec)
    fit(model, train_x, train_y, TrainConfig(epochs=3 if quick else 150, batch_size=32, lr=3e-3), desc="sunspots")
    pred = predict(model, test_x)
    last = np.asarray([s[-1] for s in test_x])
    rmse = float(np.sqrt(np.mean((pred - test_y) ** 2)))
    baseline = float(np.sqrt(np.mean((last - test_y) ** 2)))
    metrics = {
        "split": f"chronological: targets before {cutoff} train ({len(train_x)} windows of 8-40 years), "
        f"{cutoff}-2008 held out ({len(test_x)} windows of 24 years)",
        "held_out": {"rmse": round(rmse, 2)},
        "baseline": {"name": "last value (persistence)", "rmse": round(baseline, 2)},
    }
    model.spec = replace(spec, metrics=metrics)
    return model


DEMOS = {d.name: d for d in (Demo("vowels", vowels), Demo("names", names), Demo("sunspots", sunspots))}
