from __future__ import annotations

from service.model_json import TokenizerJson
from service.tokenizer import CharTokenizer


def spec(lowercase: bool = True) -> TokenizerJson:
    return TokenizerJson(
        type="char", lowercase=lowercase, vocabulary=("<pad>", "<unk>", "a", "b", "A"), padding_id=0, unknown_id=1
    )


def test_characters_map_to_their_index_and_unknowns_to_unknown_id() -> None:
    tokenizer = CharTokenizer(spec())
    assert tokenizer.encode(tokenizer.normalise("AbZ")).tolist() == [2, 3, 1]
    assert tokenizer.padding_id == 0


def test_case_is_kept_when_lowercase_is_off() -> None:
    tokenizer = CharTokenizer(spec(lowercase=False))
    assert tokenizer.encode(tokenizer.normalise("Aa")).tolist() == [4, 2]


def test_special_tokens_are_never_matched_by_text() -> None:
    tokenizer = CharTokenizer(spec())
    assert tokenizer.encode("<pad>").tolist() == [1, 1, 2, 1, 1]
