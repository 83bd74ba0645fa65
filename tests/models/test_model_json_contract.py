"""The model.json contract: what `seqserve export` writes, the server's repository scan
reads back as meant; a document with a typo'd or missing field is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.export import export_model
from models.spec import ModelSpec, Tokenizer
from models.stack import SequenceModel
from service.repository import Entry, scan_repository
from tests.models.test_export import small_spec


def text_spec() -> ModelSpec:
    return ModelSpec(
        name="text",
        task="tagging",
        cell="gru",
        bidirectional=False,
        num_layers=1,
        hidden_size=8,
        input_kind="text",
        tokenizer=Tokenizer(vocabulary=("<pad>", "<unk>", "a", "b"), lowercase=False),
        embedding_dim=4,
        num_outputs=2,
        labels=("x", "y"),
        max_length=12,
        readout="all",
    )


SPECS = {"tiny": small_spec(), "text": text_spec()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with one exported entry per spec."""
    repository = tmp_path_factory.mktemp("repository")
    for spec in SPECS.values():
        export_model(SequenceModel(spec), repository, batches=3)
    return repository


def scanned(repository: Path, name: str) -> Entry:
    [entry] = [e for e in scan_repository(repository) if e.name == name]
    return entry


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_server_reads_what_export_meant(exported: Path, name: str) -> None:
    meant = SPECS[name]
    entry = scanned(exported, name)
    assert entry.error is None and entry.spec is not None
    read = entry.spec
    assert (read.name, read.version, read.task) == (meant.name, 1, meant.task)
    assert (read.input.kind, read.input.max_length) == (meant.input_kind, meant.max_length)
    assert read.input.features == (meant.input_size if meant.input_kind == "features" else None)
    if meant.tokenizer is None:
        assert read.input.tokenizer is None
    else:
        tokenizer = read.input.tokenizer
        assert tokenizer is not None
        assert (tokenizer.vocabulary, tokenizer.lowercase) == (meant.tokenizer.vocabulary, meant.tokenizer.lowercase)
        assert (tokenizer.padding_id, tokenizer.unknown_id) == (meant.tokenizer.padding_id, meant.tokenizer.unknown_id)
    assert (read.labels, read.output_names) == (meant.labels, meant.output_names)
    assert read.graph.model_dump() == {
        "input": "input",
        "lengths": "lengths",
        "output": "logits",
        "input_dtype": "int64" if meant.input_kind == "text" else "float32",
        "output_activation": "softmax",
    }
    assert read.padding == "exact" and read.uses_lengths
    assert (read.formats.onnx, read.formats.torchscript) == ("model.onnx", "model.pt")
    assert entry.files == {"onnx": entry.path / "model.onnx", "torchscript": entry.path / "model.pt"}
    extras = read.model_extra or {}
    assert {"architecture", "family", "metrics", "parity", "provenance"} <= set(extras)  # kept, unread


@pytest.mark.parametrize(
    ("name", "section", "key", "typo", "reasons"),
    [
        (
            "tiny",
            ("graph",),
            "input_dtype",
            "input_dtpye",
            ["graph.input_dtype: Field required", "graph.input_dtpye: Extra inputs are not permitted"],
        ),
        ("tiny", ("input",), "max_length", "max_lenght", ["input.max_length: Field required"]),
        ("text", ("input", "tokenizer"), "padding_id", "pading_id", ["input.tokenizer.padding_id: Field required"]),
        ("tiny", (), "padding", "paddding", ["padding: Field required"]),
        ("tiny", (), "task", None, ["task: Field required"]),
        ("tiny", (), "formats", None, ["formats: Field required"]),
    ],
)
def test_a_document_with_a_typo_or_a_missing_field_is_refused(
    exported: Path, tmp_path: Path, name: str, section: tuple[str, ...], key: str, typo: str | None, reasons: list[str]
) -> None:
    """The document export would write, with `section.key` renamed to `typo` (or dropped)."""
    shutil.copytree(exported / name, tmp_path / name)
    path = tmp_path / name / "1" / "model.json"
    document = json.loads(path.read_text())
    target = document
    for part in section:
        target = target[part]
    value = target.pop(key)
    if typo is not None:
        target[typo] = value
    path.write_text(json.dumps(document))
    entry = scanned(tmp_path, name)
    assert entry.spec is None and entry.error is not None and entry.error.startswith("model.json is invalid: ")
    for reason in reasons:
        assert reason in entry.error
