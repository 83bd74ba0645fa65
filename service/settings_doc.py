"""The settings table of docs/settings.md, rendered from `Settings.model_fields`.

    python -m service.settings_doc                          # print the table
    python -m service.settings_doc --write docs/settings.md # replace the text between the markers
    python -m service.settings_doc --check docs/settings.md # exit 1 when the file is out of date

Each field's docstring is its description; the flag and the environment variable follow
`service.__main__`: `--field-name` and `SEQSERVE_FIELD_NAME`.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from service.settings import MiB, Settings

START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def flag(name: str, field: FieldInfo) -> str:
    option = "--" + name.replace("_", "-")
    if field.annotation is bool:
        return f"`{option}` / `--no-{option[2:]}`"
    return f"`{option}`"


def env(name: str) -> str:
    return f"`SEQSERVE_{name.upper()}`"


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and value >= 1 << 20 and (value & (value - 1)) == 0:
        return f"2^{value.bit_length() - 1}"
    return str(value)


def kind(field: FieldInfo) -> str:
    """The type, its choices for a Literal, and its bounds; each alternative of a union (`int` bounded, or `auto`)."""
    annotation = field.annotation
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    alternatives = list(typing.get_args(annotation)) if union else [annotation]
    optional = type(None) in alternatives
    alternatives = [a for a in alternatives if a is not type(None)]
    metadata = field.metadata if len(alternatives) == 1 else ()  # the field's own bounds bound a lone type
    return " or ".join(_kind(a, metadata) for a in alternatives) + (", optional" if optional else "")


def _kind(annotation: Any, metadata: Sequence[Any]) -> str:
    if typing.get_origin(annotation) is typing.Annotated:  # its Field(...) holds its bounds
        inner = [b for m in annotation.__metadata__ for b in (m.metadata if isinstance(m, FieldInfo) else [m])]
        return _kind(typing.get_args(annotation)[0], [*inner, *metadata])
    if typing.get_origin(annotation) is typing.Literal:
        text = ", ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    elif annotation is SecretStr:
        text = "string (secret)"
    elif annotation is Path:
        text = "path"
    elif annotation is str:
        text = "string"
    elif isinstance(annotation, type):
        text = annotation.__name__
    else:
        text = str(annotation)
    low = high = ""
    for bound in metadata:
        if isinstance(bound, Ge):
            low = f"{_number(bound.ge)} <= "
        elif isinstance(bound, Gt):
            low = f"{_number(bound.gt)} < "
        elif isinstance(bound, Le):
            high = f" <= {_number(bound.le)}"
        elif isinstance(bound, Lt):
            high = f" < {_number(bound.lt)}"
    return f"{low}{text}{high}"


def default(field: FieldInfo) -> str:
    value = field.default
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int) and value >= MiB and value % MiB == 0:
        return f"`{value}` ({value // MiB} MiB)"
    return f"`{_number(value) if isinstance(value, float) else value}`"


def description(field: FieldInfo) -> str:
    text = " ".join((field.description or "").split())
    return text.replace("|", "\\|")


def table() -> str:
    """The markdown table, one row per setting, in the order `Settings` declares them."""
    rows = [
        "| flag | environment | type | default | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        cells = (flag(name, field), env(name), kind(field), default(field), description(field))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def render_into(text: str) -> str:
    """`text` with the table between the markers replaced; ValueError without the markers."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {START} ... {END} markers")
    return text[: start + len(START)] + "\n" + table() + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.settings_doc", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="FILE", help="replace the table between the markers in FILE")
    group.add_argument("--check", type=Path, metavar="FILE", help="exit 1 when FILE's table is out of date")
    args = parser.parse_args(argv)
    path: Path | None = args.write or args.check
    if path is None:
        sys.stdout.write(table())
        return 0
    try:
        old = path.read_text()
        new = render_into(old)
    except (OSError, ValueError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != old:
            print(f"{path}: the settings table is out of date; run python -m service.settings_doc --write {path}")
            return 1
        return 0
    if new != old:
        path.write_text(new)
        print(f"{path}: settings table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
