from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.repository import scan_repository
from tests.service.specs import spec_document


def write_entry(
    root: Path, name: str = "m", version: str = "1", files: tuple[str, ...] = ("model.onnx",), **overrides: Any
) -> Path:
    directory = root / name / version
    directory.mkdir(parents=True)
    document = spec_document(**overrides)
    document["name"] = name
    if version.isdigit():
        document["version"] = int(version)
    (directory / "model.json").write_text(json.dumps(document))
    for file in files:
        (directory / file).write_bytes(b"graph")
    return directory


def test_a_valid_entry(tmp_path: Path) -> None:
    write_entry(tmp_path)
    [entry] = scan_repository(tmp_path)
    assert entry.ok and entry.name == "m" and entry.version == 1
    assert entry.spec is not None and entry.spec.task == "classification"
    assert entry.files == {"onnx": (tmp_path / "m" / "1" / "model.onnx").resolve()}


def test_entries_are_sorted_and_odd_directories_skipped(tmp_path: Path) -> None:
    write_entry(tmp_path, "b", "2")
    write_entry(tmp_path, "b", "10")
    write_entry(tmp_path, "a", "1")
    (tmp_path / "Bad Name" / "1").mkdir(parents=True)
    (tmp_path / "a" / "latest").mkdir()
    (tmp_path / "a" / "0").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert [(e.name, e.version) for e in scan_repository(tmp_path)] == [("a", 1), ("b", 2), ("b", 10)]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"task": "dancing"}, "model.json is invalid: task"),
        (
            {"graph": {"input": "input", "lengths": None, "output": "y", "input_dtype": "int64"}},
            "input kind 'features' needs graph.input_dtype 'float32'",
        ),
        ({"labels": None}, "labels are required"),
        ({"formats": {"onnx": "../other/model.onnx"}}, "formats.onnx"),
        ({"schema_version": 2}, "schema_version"),
    ],
)
def test_broken_entries_carry_their_reason(tmp_path: Path, change: dict[str, Any], reason: str) -> None:
    write_entry(tmp_path, **change)
    [entry] = scan_repository(tmp_path)
    assert not entry.ok and entry.error is not None and reason in entry.error


def test_missing_json_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "nojson" / "1").mkdir(parents=True)
    write_entry(tmp_path, "nofile", files=())
    broken = {e.name: e.error for e in scan_repository(tmp_path)}
    assert broken == {"nojson": "model.json is missing", "nofile": "no model file found (listed: model.onnx)"}


def test_name_must_match_directory(tmp_path: Path) -> None:
    directory = write_entry(tmp_path, "m")
    document = json.loads((directory / "model.json").read_text())
    document["name"] = "other"
    (directory / "model.json").write_text(json.dumps(document))
    [entry] = scan_repository(tmp_path)
    assert entry.error == "model.json names other/1 but lies in m/1"


def test_files_outside_the_entry_are_never_used(tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"graph")
    directory = write_entry(tmp_path / "repo", files=())
    (directory / "model.onnx").symlink_to(outside)
    [entry] = scan_repository(tmp_path / "repo")
    assert entry.error == "formats.onnx points outside the entry directory"


def test_invalid_json_is_a_broken_entry(tmp_path: Path) -> None:
    directory = write_entry(tmp_path)
    (directory / "model.json").write_text("{not json")
    [entry] = scan_repository(tmp_path)
    assert entry.error is not None and entry.error.startswith("model.json is invalid")
