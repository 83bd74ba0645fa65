"""Server-side tokenization of text inputs with the vocabulary from model.json."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from service.model_json import TokenizerJson


class CharTokenizer:
    """The model's own tokenizer, as model.json describes it: one token per character (``char``),
    whitespace-separated words (``word``) or every match of a pattern (``regex``); lowercased
    first only when the model's tokenizer did. Tokens outside the vocabulary map to `unknown_id`."""

    def __init__(self, spec: TokenizerJson) -> None:
        self._lowercase = spec.lowercase
        self._unknown = spec.unknown_id
        self._type = spec.type
        self.unit = {"char": "character", "word": "word"}.get(spec.type, "token")
        """What one token is, for error messages."""
        self._pattern = re.compile(spec.pattern) if spec.type == "regex" and spec.pattern else None
        self.rejects_unknown = spec.unknown == "reject"
        self.padding_id = spec.padding_id
        # For characters, multi-character entries ("<pad>", "<unk>") are specials no text maps to.
        single = spec.type == "char"
        self._ids = {token: i for i, token in enumerate(spec.vocabulary) if token and (not single or len(token) == 1)}

    def normalise(self, text: str) -> Sequence[str]:
        """The text's tokens: the text itself for characters, else a list of tokens."""
        source = text.lower() if self._lowercase else text
        if self._type == "word":
            return source.split()
        if self._pattern is not None:
            return [token for token in self._pattern.findall(source) if token]
        return source

    def first_unknown(self, normalised: Sequence[str]) -> int | None:
        """The index of the first token of already normalised text that is not in the vocabulary."""
        ids = self._ids
        return next((i for i, c in enumerate(normalised) if c not in ids), None)

    def encode(self, normalised: Sequence[str]) -> np.ndarray:
        """Token ids `[T]` (int64) of already normalised text."""
        get, unknown = self._ids.get, self._unknown
        return np.fromiter((get(c, unknown) for c in normalised), dtype=np.int64, count=len(normalised))
