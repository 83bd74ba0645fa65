"""The model repository on disk: find entries and validate their model.json.

Layout: <root>/<name>/<version>/model.json beside model.onnx and/or model.pt.
Nothing here loads a graph; a broken entry is kept with the reason, so that
it can be listed and logged instead of stopping the others.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,8}$")
# A format entry names a file inside the entry's own directory, nothing else.
_FILE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")

Task = Literal["classification", "regression", "tagging"]
InputKind = Literal["features", "text"]
Padding = Literal["exact", "equal-length"]
RuntimeKind = Literal["onnx", "torchscript"]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TokenizerSpec(_Spec):
    type: Literal["char"]
    lowercase: bool = True
    vocabulary: tuple[str, ...] = Field(min_length=2)
    padding_id: int = Field(ge=0)
    unknown_id: int = Field(ge=0)

    @model_validator(mode="after")
    def _ids_in_vocabulary(self) -> TokenizerSpec:
        size = len(self.vocabulary)
        if self.padding_id >= size or self.unknown_id >= size:
            raise ValueError(f"padding_id and unknown_id must be < vocabulary size {size}")
        return self


class InputSpec(_Spec):
    kind: InputKind
    features: int | None = Field(default=None, ge=1, le=1 << 20)
    max_length: int = Field(ge=1, le=1 << 20)
    tokenizer: TokenizerSpec | None = None

    @model_validator(mode="after")
    def _kind_fields(self) -> InputSpec:
        if self.kind == "features" and self.features is None:
            raise ValueError("input.features is required for kind 'features'")
        if self.kind == "text" and self.tokenizer is None:
            raise ValueError("input.tokenizer is required for kind 'text'")
        return self


class GraphSpec(_Spec):
    input: str = Field(min_length=1)
    lengths: str | None = None
    output: str = Field(min_length=1)
    input_dtype: Literal["float32", "int64"]
    output_activation: Literal["softmax", "none"] = "none"


class FormatsSpec(_Spec):
    onnx: str | None = Field(default=None, pattern=_FILE_NAME_PATTERN.pattern)
    torchscript: str | None = Field(default=None, pattern=_FILE_NAME_PATTERN.pattern)


class ModelSpec(BaseModel):
    """model.json, schema_version 1. Informational sections are kept, unread."""

    model_config = ConfigDict(frozen=True, extra="allow")

    schema_version: Literal[1]
    name: str = Field(pattern=NAME_PATTERN.pattern)
    version: int = Field(ge=1)
    task: Task
    description: str = ""
    input: InputSpec
    labels: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    graph: GraphSpec
    padding: Padding
    formats: FormatsSpec

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.task in ("classification", "tagging") and not self.labels:
            raise ValueError(f"labels are required for task '{self.task}'")
        if self.padding == "exact" and self.graph.lengths is None:
            raise ValueError("padding 'exact' needs a graph lengths input")
        expected_dtype = "float32" if self.input.kind == "features" else "int64"
        if self.graph.input_dtype != expected_dtype:
            raise ValueError(f"input kind '{self.input.kind}' needs graph.input_dtype '{expected_dtype}'")
        if self.formats.onnx is None and self.formats.torchscript is None:
            raise ValueError("formats lists no model file")
        return self

    @property
    def uses_lengths(self) -> bool:
        return self.graph.lengths is not None


@dataclass(frozen=True)
class Entry:
    """One <name>/<version> directory: a valid spec with its files, or the reason it is not."""

    name: str
    version: int
    path: Path
    spec: ModelSpec | None
    files: dict[RuntimeKind, Path]
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def scan_repository(root: Path) -> list[Entry]:
    """Every entry under `root`, sorted by name then version; broken ones carry `error`."""
    entries: list[Entry] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not NAME_PATTERN.match(model_dir.name):
            log.warning("skipping %s: not a valid model name (%s)", model_dir, NAME_PATTERN.pattern)
            continue
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not VERSION_PATTERN.match(version_dir.name):
                log.warning("skipping %s: versions are positive integers", version_dir)
                continue
            entries.append(_read_entry(model_dir.name, int(version_dir.name), version_dir))
    entries.sort(key=lambda e: (e.name, e.version))
    return entries


def _read_entry(name: str, version: int, path: Path) -> Entry:
    def broken(reason: str) -> Entry:
        return Entry(name, version, path, None, {}, reason)

    meta = path / "model.json"
    if not meta.is_file():
        return broken("model.json is missing")
    try:
        spec = ModelSpec.model_validate_json(meta.read_bytes())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        return broken(f"model.json is invalid: {problems}")
    except OSError as exc:
        return broken(f"model.json could not be read: {exc}")
    if spec.name != name or spec.version != version:
        return broken(f"model.json names {spec.name}/{spec.version} but lies in {name}/{version}")

    root = path.resolve()
    files: dict[RuntimeKind, Path] = {}
    missing: list[str] = []
    for kind, file_name in (("onnx", spec.formats.onnx), ("torchscript", spec.formats.torchscript)):
        if file_name is None:
            continue
        file_path = (path / file_name).resolve()
        if file_path.parent != root:
            return broken(f"formats.{kind} points outside the entry directory")
        if file_path.is_file():
            files[kind] = file_path  # type: ignore[index]
        else:
            missing.append(file_name)
    if not files:
        return broken(f"no model file found (listed: {', '.join(missing)})")
    for file_name in missing:
        log.warning("%s/%s: listed file %s is missing; serving from the others", name, version, file_name)
    return Entry(name, version, path, spec, files, None)
