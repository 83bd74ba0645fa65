"""Server-side tokenization of text inputs with the vocabulary from model.json."""

from __future__ import annotations

import numpy as np

from service.model_json import TokenizerJson


class CharTokenizer:
    """One token per character; characters outside the vocabulary map to `unknown_id`."""

    def __init__(self, spec: TokenizerJson) -> None:
        self._lowercase = spec.lowercase
        self._unknown = spec.unknown_id
        self.rejects_unknown = spec.unknown == "reject"
        self.padding_id = spec.padding_id
        # Multi-character entries ("<pad>", "<unk>") are specials no character maps to.
        self._ids = {token: i for i, token in enumerate(spec.vocabulary) if len(token) == 1}

    def normalise(self, text: str) -> str:
        return text.lower() if self._lowercase else text

    def first_unknown(self, normalised: str) -> int | None:
        """The index of the first character of already normalised text that is not in the vocabulary."""
        ids = self._ids
        return next((i for i, c in enumerate(normalised) if c not in ids), None)

    def encode(self, normalised: str) -> np.ndarray:
        """Token ids `[T]` (int64) of already normalised text."""
        get, unknown = self._ids.get, self._unknown
        return np.fromiter((get(c, unknown) for c in normalised), dtype=np.int64, count=len(normalised))
