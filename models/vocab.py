"""The user's vocabulary file as a ``Tokenizer``: a JSON mapping of token to id
(or a JSON list), or a text file with one token per line (id = line number).

seqserve lowercases only when told the user's tokenizer does (``--lowercase``);
padding and unknown ids come from the usual special tokens, else the
embedding's ``padding_idx``, else are asked for by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.spec import SpecError, Tokenizer

PAD_TOKENS = ("<pad>", "[PAD]", "<PAD>", "PAD", "<blank>", "<PADDING>")
UNK_TOKENS = ("<unk>", "[UNK]", "<UNK>", "UNK", "<oov>", "<OOV>", "<unknown>")


def read_vocabulary(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise SpecError(f"{path}: no such vocabulary file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}: not JSON ({exc})") from None
        if isinstance(data, list) and all(isinstance(t, str) for t in data):
            return tuple(data)
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in data.items()):
            raise SpecError(f"{path}: a vocabulary is a JSON object of token to id, or a list of tokens")
        if not data:
            raise SpecError(f"{path}: an empty vocabulary")
        ids = sorted(data.values())
        if ids[0] < 0 or len(set(ids)) != len(ids):
            raise SpecError(f"{path}: ids must be distinct and >= 0")
        # NOTE: an id no token has gets "", which no tokenizer produces.
        tokens = [""] * (ids[-1] + 1)
        for token, i in data.items():
            tokens[i] = token
        return tuple(tokens)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return tuple(line.removesuffix("\r") for line in lines)


def load_tokenizer(
    path: Path,
    kind: str = "char",
    *,
    lowercase: bool = False,
    padding_idx: int | None = None,
    unknown_token: str | None = None,
    embedding_rows: int | None = None,
) -> Tokenizer:
    """``kind``: ``char``, ``word`` or ``regex:PATTERN``."""
    vocabulary = read_vocabulary(path)
    if len(vocabulary) < 2:
        raise SpecError(f"{path}: a vocabulary needs at least 2 entries, has {len(vocabulary)}")
    if embedding_rows is not None and len(vocabulary) > embedding_rows:
        raise SpecError(f"{path}: {len(vocabulary)} tokens, but the module's embedding has {embedding_rows} rows")
    type_, _, pattern = kind.partition(":")
    if type_ not in ("char", "word", "regex") or (type_ == "regex") != bool(pattern):
        raise SpecError(f"--tokenizer {kind!r}: char, word or regex:PATTERN")
    index = {token: i for i, token in enumerate(vocabulary)}
    pad = next((index[t] for t in PAD_TOKENS if t in index), padding_idx if padding_idx is not None else 0)
    if unknown_token is not None:
        if unknown_token not in index:
            raise SpecError(f"--unknown-token {unknown_token!r} is not in {path}")
        unk = index[unknown_token]
    else:
        found = next((index[t] for t in UNK_TOKENS if t in index), None)
        if found is None:
            raise SpecError(
                f"{path}: no unknown token ({', '.join(UNK_TOKENS[:3])}, ...); name the id text outside the "
                "vocabulary gets with --unknown-token TOKEN"
            )
        unk = found
    return Tokenizer(
        vocabulary=vocabulary,
        lowercase=lowercase,
        type=type_,  # type: ignore[arg-type]
        padding_id=pad,
        unknown_id=unk,
        pattern=pattern or None,
    )


def describe_tokenizer(tokenizer: Tokenizer) -> str:
    how = {"char": "one token per character", "word": "words split on whitespace"}.get(
        tokenizer.type, f"matches of {tokenizer.pattern!r}"
    )
    case = "lowercased first" if tokenizer.lowercase else "case kept"
    line = (
        f"tokenizer: {how}, {case}, {len(tokenizer.vocabulary)} tokens, padding id {tokenizer.padding_id}, "
        f"unknown id {tokenizer.unknown_id}"
    )
    words = [t for t in tokenizer.vocabulary if t not in PAD_TOKENS + UNK_TOKENS]
    if not tokenizer.lowercase and any(t != t.upper() for t in words) and all(t == t.lower() for t in words):
        line += " (the vocabulary has no uppercase tokens: if your tokenizer lowercases text, pass --lowercase)"
    return line
