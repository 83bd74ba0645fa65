"""Demo data sets that ship inside installed packages (no download at run time)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class Split:
    sequences: list[np.ndarray]
    """Each ``[T, F]`` float32 (features) or ``[T]`` int64 (tokens)."""
    targets: np.ndarray


def japanese_vowels() -> tuple[Split, Split, list[str]]:
    """Nine speakers uttering /ae/: 12 LPC cepstrum coefficients per frame,
    7-29 frames. The data set's own train (270) / test (370) split."""
    from sktime.datasets import load_japanese_vowels

    def split(name: str) -> tuple[list[np.ndarray], np.ndarray]:
        frame, labels = load_japanese_vowels(split=name, return_X_y=True)
        seqs = [
            np.stack([np.asarray(frame.iloc[i, j], dtype=np.float32) for j in range(frame.shape[1])], axis=1)
            for i in range(len(frame))
        ]
        return seqs, np.asarray(labels)

    train_x, train_y = split("train")
    test_x, test_y = split("test")
    classes = sorted(set(train_y.tolist()), key=int)
    index = {c: i for i, c in enumerate(classes)}
    to_ids = np.vectorize(index.__getitem__)
    labels = [f"speaker-{c}" for c in classes]
    return Split(train_x, to_ids(train_y)), Split(test_x, to_ids(test_y)), labels


GENDER_CODES = {"M": "male", "1M": "male", "?M": "male", "F": "female", "1F": "female", "?F": "female"}


def first_names() -> list[tuple[str, str]]:
    """(name, "female" | "male") from gender-guesser's name dictionary.

    Names the dictionary calls unisex (``?``) or marks as spelling variants
    (``=``) are left out, as are names listed with both genders.
    """
    text = resources.files("gender_guesser").joinpath("data/nam_dict.txt").read_text(encoding="utf-8")
    genders: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or len(line) < 30:
            continue
        code, name = line[:2].strip(), line[3:29].strip().replace("+", " ")
        if code in GENDER_CODES and name:
            genders.setdefault(name, set()).add(GENDER_CODES[code])
    return sorted((name, g.pop()) for name, g in genders.items() if len(g) == 1)


def stable_fraction(key: str) -> float:
    """A deterministic number in [0, 1) per key, for splits that never shift."""
    return zlib.crc32(key.encode()) / 2**32


def sunspots() -> tuple[np.ndarray, np.ndarray]:
    """Yearly mean sunspot numbers 1700-2008 (statsmodels): years, values."""
    from statsmodels.datasets import sunspots as data

    frame = data.load_pandas().data
    return frame["YEAR"].to_numpy(dtype=np.int64), frame["SUNACTIVITY"].to_numpy(dtype=np.float32)
