"""The docs stay true: the settings table matches `service/settings.py`, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import report
from service import settings_doc
from service.__main__ import build_parser
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MOST_LINES = 300

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> list[str]:
    """The lines outside code fences, with inline code removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if fenced or not match:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for line in _prose(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    return broken


def test_settings_table_matches_settings_py() -> None:
    path = ROOT / "docs" / "settings.md"
    text = path.read_text()
    assert text == settings_doc.render_into(text), (
        "docs/settings.md is out of date: run python -m service.settings_doc --write docs/settings.md"
    )


def test_settings_table_writes_each_type_for_a_reader() -> None:
    # a union of a bounded int and a choice reads as both, bounds kept; no Python type's repr leaks in
    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ")[2] for line in settings_doc.table().splitlines()[2:]}
    assert rows["--http-workers"] == "0 <= int <= 256 or `auto`"
    assert rows["--batch-workers"] == "0 <= int <= 256"
    assert not [row for row in rows.values() if "typing." in row or "FieldInfo" in row or "Annotated" in row]


def test_settings_table_has_one_row_per_field_with_the_servers_flag_and_variable() -> None:
    options = build_parser()._option_string_actions
    rows = [line for line in settings_doc.table().splitlines()[2:]]
    assert len(rows) == len(Settings.model_fields)
    for row, (name, field) in zip(rows, Settings.model_fields.items(), strict=True):
        flag = "--" + name.replace("_", "-")
        assert flag in options, flag
        assert row.startswith(f"| `{flag}`") and f"`SEQSERVE_{name.upper()}`" in row
        assert field.description and settings_doc.description(field) in row


def test_check_command_reports_drift(tmp_path: Path) -> None:
    stale = tmp_path / "settings.md"
    stale.write_text(f"x\n{settings_doc.START}\n| old |\n{settings_doc.END}\ny\n")
    assert settings_doc.main(["--check", str(stale)]) == 1
    assert settings_doc.main(["--write", str(stale)]) == 0
    assert settings_doc.main(["--check", str(stale)]) == 0
    assert stale.read_text().startswith(f"x\n{settings_doc.START}\n| flag |")
    assert stale.read_text().endswith(f"{settings_doc.END}\ny\n")
    assert settings_doc.main(["--check", str(ROOT / "README.md")]) == 2  # no markers


def test_settings_docstrings_carry_no_benchmark_figures() -> None:
    for name, field in Settings.model_fields.items():
        assert not re.search(r"\d+ ?%|seq/s|\bcores?\b.*\bclients\b", field.description or ""), name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_readme_is_short_and_keeps_the_benchmark_markers() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MOST_LINES
    assert text.count(report.START) == 1 and text.count(report.END) == 1
    assert text.index(report.START) < text.index(report.END)


def test_slug_follows_github() -> None:
    assert _slug("Targets: which hold, and what stands in the way") == "targets-which-hold-and-what-stands-in-the-way"
    assert _slug("In `model.json`") == "in-modeljson"
    assert _slug("Bring your own checkpoint (families F1-F9)") == "bring-your-own-checkpoint-families-f1-f9"


def test_readme_settings_rows_match_settings_py() -> None:
    """The README's short settings table names real flags, their variables and their defaults."""
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `--")]
    assert rows
    fields = Settings.model_fields
    for row in rows:
        flags, envs, defaults = (cell.strip() for cell in row.strip("|").split(" | ")[:3])
        names = [flag.strip("`").removeprefix("--").replace("-", "_") for flag in flags.split(", ")]
        assert envs.split(", ") == [settings_doc.env(name) for name in names], row
        assert defaults.split(", ") == [settings_doc.default(fields[name]) for name in names], row
