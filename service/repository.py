"""The model repository on disk: find entries and validate their model.json.

Layout: <root>/<name>/<version>/model.json beside model.onnx and/or model.pt.
Nothing here loads a graph; a broken entry is kept with the reason, so that
it can be listed and logged instead of stopping the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from service.checks import metadata_problems
from service.model_json import NAME_PATTERN, VERSION_PATTERN, ModelJson, RuntimeKind, validation_problems

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One <name>/<version> directory: a valid spec with its files, or the reason it is not."""

    name: str
    version: int
    path: Path
    spec: ModelJson | None
    files: dict[RuntimeKind, Path]
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def scan_repository(root: Path) -> list[Entry]:
    """Every entry under `root`, sorted by name then version; broken ones carry `error`."""
    return [read_entry(name, version, path) for (name, version), path in sorted(version_dirs(root).items())]


def scan_model(root: Path, name: str) -> list[Entry]:
    """The entries of one model, `<root>/<name>/<version>`, sorted by version; [] without its directory."""
    found = version_dirs(root, only=name)
    return [read_entry(name, version, found[name, version]) for name, version in sorted(found)]


def version_dirs(root: Path, *, only: str | None = None, warn: bool = True) -> dict[tuple[str, int], Path]:
    """Every `<root>/<name>/<version>` directory by (name, version), without reading any of it; of
    model `only` when given. Hidden directories and names that are no model name or version are skipped
    (logged when `warn`): publish a version by renaming a finished directory into place."""
    found: dict[tuple[str, int], Path] = {}
    models = [root / only] if only is not None else list(root.iterdir())
    for model_dir in sorted(p for p in models if p.is_dir() and not p.name.startswith(".")):
        if not NAME_PATTERN.match(model_dir.name):
            if warn:
                log.warning("skipping %s: not a valid model name (%s)", model_dir, NAME_PATTERN.pattern)
            continue
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not VERSION_PATTERN.match(version_dir.name):
                if warn:
                    log.warning("skipping %s: versions are positive integers", version_dir)
                continue
            found[model_dir.name, int(version_dir.name)] = version_dir
    return found


def signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when an entry's files change: each file's name, size and modification time."""
    try:
        stats = [(p.name, p.stat()) for p in path.iterdir() if p.is_file()]
    except OSError:
        return ()
    return tuple(sorted((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats))


def read_entry(name: str, version: int, path: Path) -> Entry:
    def broken(reason: str) -> Entry:
        return Entry(name, version, path, None, {}, reason)

    meta = path / "model.json"
    if not meta.is_file():
        return broken("model.json is missing")
    try:
        spec = ModelJson.model_validate_json(meta.read_bytes())
    except ValidationError as exc:
        return broken(f"model.json is invalid: {validation_problems(exc)}")
    except OSError as exc:
        return broken(f"model.json could not be read: {exc}")
    if spec.name != name or spec.version != version:
        return broken(f"model.json names {spec.name}/{spec.version} but lies in {name}/{version}")
    problems = metadata_problems(spec)
    if problems:
        return broken(f"model.json: {'; '.join(problems)}")

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
