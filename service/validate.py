"""`seqserve validate REPOSITORY`: every entry checked offline, as the server's loader checks it.

For each `<name>/<version>`: the model.json schema, the metadata checks (`service.checks`), the listed
files, then each graph opened on the CPU and probed (`service.checks.graph_problems`). One line per
problem, `name/version: problem`; the exit status is 1 when any entry has one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from service.checks import graph_problems, metadata_problems
from service.model_json import ModelJson
from service.repository import read_entry, version_dirs
from service.runtime import Runtime, RuntimeUnavailable, ThreadSettings, open_runtime

EXIT_PROBLEMS = 1


def entry_problems(name: str, version: int, path: Path) -> tuple[list[str], list[str]]:
    """The problems of one entry, one line each, and notes (what could not be checked here)."""
    meta = path / "model.json"
    if not meta.is_file():
        return ["model.json is missing"], []
    try:
        spec = ModelJson.model_validate_json(meta.read_bytes())
    except ValidationError as exc:
        return [f"model.json: {'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()], []
    except OSError as exc:
        return [f"model.json could not be read: {exc}"], []
    problems = [f"model.json: {problem}" for problem in metadata_problems(spec)]
    if problems:
        return problems, []
    entry = read_entry(name, version, path)
    if entry.error is not None:
        return [entry.error], []
    notes: list[str] = []
    for kind, file in entry.files.items():

        def probe(runtime: Runtime, file: Path = file) -> None:
            problems.extend(f"{file.name}: {problem}" for problem in graph_problems(spec, runtime))

        try:
            open_runtime(kind, file, spec, "cpu", ThreadSettings(1, 1, 1), probe)
        except RuntimeUnavailable as exc:
            notes.append(f"{file.name}: not checked ({exc})")
        except Exception as exc:
            problems.append(f"{file.name}: {exc}")
    return problems, notes


def validate(root: Path, only: str | None = None) -> tuple[list[str], int]:
    """Every problem in the repository as `name/version: problem` lines (notes as `name/version: note: ...`),
    and how many entries were checked."""
    if not root.is_dir():
        return [f"{root}: no such repository directory"], 0
    found = version_dirs(root, only=only)
    lines: list[str] = []
    for (name, version), path in sorted(found.items()):
        problems, notes = entry_problems(name, version, path)
        lines += [f"{name}/{version}: {problem}" for problem in problems]
        lines += [f"{name}/{version}: note: {note}" for note in notes]
    return lines, len(found)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="seqserve validate",
        description="Check every entry of a model repository offline, as the server checks it when loading: "
        "one line per problem, exit status 1 when there is any.",
    )
    parser.add_argument("repository", type=Path, help="the model repository (<repository>/<name>/<version>/)")
    parser.add_argument("--name", help="check only this model's versions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.name is not None and not (args.repository / args.name).is_dir():
        print(f"seqserve validate: error: {args.repository / args.name}: no such model directory", file=sys.stderr)
        return EXIT_PROBLEMS
    lines, checked = validate(args.repository, args.name)
    for line in lines:
        print(line)
    failing = {line.split(":", 1)[0] for line in lines if ": note: " not in line}
    if failing:
        print(f"{len(failing)} of {checked} entries have problems", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"{checked} entries checked: all valid")
    return 0
