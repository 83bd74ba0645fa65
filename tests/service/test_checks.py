"""Metadata that would serve wrong answers without a word is refused: by `seqserve validate`, one line per
problem, and by the loader, as a broken entry with its reason. (Checks that probe a graph are in
tests/models/test_add.py, with graphs users export.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.checks import metadata_problems
from service.model_json import ModelJson
from service.repository import scan_repository
from service.validate import main as validate
from tests.service.specs import spec_document

WHERE = "input.tokenizer.vocabulary"


def text_document(vocabulary: list[str], **tokenizer: Any) -> dict[str, Any]:
    document = spec_document("text")
    document["input"]["tokenizer"] |= {"vocabulary": vocabulary, **tokenizer}
    return document


@pytest.mark.parametrize(
    ("vocabulary", "tokenizer", "problems"),
    [
        (["<pad>", "<unk>", "a", "b", "a"], {}, [f"{WHERE}: 'a' appears 2 times (ids 2, 4)"]),
        (
            ["<pad>", "<unk>", "a", "ch", ""],
            {},
            [
                f"{WHERE}[3]: 'ch' is 2 characters; a 'char' tokenizer maps single characters (only the padding and "
                "unknown entries may be longer)",
            ],
        ),
        # "" marks an id no text maps to (embedding rows past the user's vocabulary), however many there are
        (["<pad>", "<unk>", "a", "", ""], {}, []),
        (
            ["<pad>", "<unk>", "a", "A", "B"],
            {"lowercase": True},
            [
                f"{WHERE}[3]: 'A' is upper case and lowercase is on: 'a' (id 2) is there too; text never maps to id 3 "
                "(set lowercase to false, or drop the upper case entries)",
                f"{WHERE}[4]: 'B' is upper case and lowercase is on: text never maps to id 4 (set lowercase to false, "
                "or drop the upper case entries)",
            ],
        ),
        (["<pad>", "<unk>", "a", "A", "B"], {"lowercase": False}, []),
    ],
)
def test_vocabulary_problems(vocabulary: list[str], tokenizer: dict[str, Any], problems: list[str]) -> None:
    assert metadata_problems(ModelJson.model_validate(text_document(vocabulary, **tokenizer))) == problems


def test_duplicate_labels() -> None:
    spec = ModelJson.model_validate(spec_document(labels=["x", "y", "x"]))
    assert metadata_problems(spec) == ["labels: 'x' appears more than once"]


def write(root: Path, name: str, document: dict[str, Any]) -> None:
    folder = root / name / "1"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps(document | {"name": name}))
    (folder / "model.onnx").write_bytes(b"not opened: the metadata is refused first")


def test_the_loader_and_validate_refuse_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "cases", text_document(["<pad>", "<unk>", "a", "A", "a"]))
    write(tmp_path, "schema", spec_document(task="dancing"))
    [cases, schema] = scan_repository(tmp_path)
    assert cases.error == (
        f"model.json: {WHERE}: 'a' appears 2 times (ids 2, 4); {WHERE}[3]: 'A' is upper case and lowercase is on: "
        "'a' (id 2) is there too; text never maps to id 3 (set lowercase to false, or drop the upper case entries)"
    )
    assert schema.error is not None and schema.error.startswith("model.json is invalid: task")

    assert validate([str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"cases/1: model.json: {WHERE}: 'a' appears 2 times (ids 2, 4)",
        f"cases/1: model.json: {WHERE}[3]: 'A' is upper case and lowercase is on: 'a' (id 2) is there too; text "
        "never maps to id 3 (set lowercase to false, or drop the upper case entries)",
        "schema/1: model.json: task: Input should be 'classification', 'regression' or 'tagging'",
    ]
    assert err == "2 of 2 entries have problems\n"


def test_validate_an_empty_or_missing_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate([str(tmp_path)]) == 0
    assert capsys.readouterr().out == "0 entries checked: all valid\n"
    assert validate([str(tmp_path / "nowhere")]) == 1
    assert "no such repository directory" in capsys.readouterr().out
