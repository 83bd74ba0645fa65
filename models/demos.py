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


def _fitted(spec: ModelSpec, sequences: list[np.ndarray], targets: np.ndarray, config: TrainConfig) -> SequenceModel:
    """A new model for ``spec``, trained; progress is labelled with its name."""
    model = SequenceModel(spec)
    fit(model, sequences, targets, config, desc=spec.name)
    return model


def _with_metrics(
    model: SequenceModel, split: str, held_out: dict[str, float], baseline: dict[str, str | float]
) -> SequenceModel:
    """``model`` with its held-out figures and the baseline's recorded in its spec."""
    model.spec = replace(model.spec, metrics={"split": split, "held_out": held_out, "baseline": baseline})
    return model


def _classifier_with_metrics(
    model: SequenceModel, split: str, train_targets: np.ndarray, test: list[np.ndarray], test_targets: np.ndarray
) -> SequenceModel:
    """Held-out accuracy beside always answering the training set's majority class."""
    accuracy = float((predict(model, test).argmax(axis=1) == test_targets).mean())
    majority = np.bincount(train_targets).argmax()
    baseline = float((test_targets == majority).mean())
    return _with_metrics(
        model, split, {"accuracy": round(accuracy, 4)}, {"name": "majority class", "accuracy": round(baseline, 4)}
    )


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
    config = TrainConfig(epochs=3 if quick else 60, batch_size=32, lr=3e-3)
    model = _fitted(spec, train.sequences, train.targets, config)
    split = f"the data set's own: {len(train.sequences)} train / {len(test.sequences)} held-out test"
    return _classifier_with_metrics(model, split, train.targets, test.sequences, test.targets)


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
    model = _fitted(spec, train_x, train_y, TrainConfig(epochs=1 if quick else 6, batch_size=128, lr=5e-3))
    split = f"by a hash of the name: {len(train)} train / {len(test)} held-out"
    return _classifier_with_metrics(model, split, train_y, test_x, test_y)


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
    model = _fitted(spec, train_x, train_y, TrainConfig(epochs=3 if quick else 150, batch_size=32, lr=3e-3))
    rmse = float(np.sqrt(np.mean((predict(model, test_x) - test_y) ** 2)))
    last = np.asarray([s[-1] for s in test_x])
    baseline = float(np.sqrt(np.mean((last - test_y) ** 2)))
    split = (
        f"chronological: targets before {cutoff} train ({len(train_x)} windows of 8-40 years), "
        f"{cutoff}-2008 held out ({len(test_x)} windows of 24 years)"
    )
    return _with_metrics(
        model, split, {"rmse": round(rmse, 2)}, {"name": "last value (persistence)", "rmse": round(baseline, 2)}
    )


DEMOS = {d.name: d for d in (Demo("vowels", vowels), Demo("names", names), Demo("sunspots", sunspots))}
