"""The benchmark's machinery at tiny settings: it runs, and writes what it promises. No timings asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.run import Bench, Config


@pytest.mark.slow
def test_quick_run_writes_json_table_and_plots(tmp_path: Path) -> None:
    config = Config.quick(tmp_path / "work", concurrency=(1, 4), demo_repository=None)
    results = Bench(config, lambda label: None).run()
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench:start -->\nold\n<!-- bench:end -->\n\nafter\n")
    written = report.write(results, tmp_path / "out", readme=readme)

    names = {p.name for p in written}
    assert {"results.json", "table.md", "README.md"} <= names
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = saved["summary"]["closed"]
    assert [r["concurrency"] for r in rows] == [1, 4]
    assert all(r["seqserve_seq_s"] > 0 and r["floor_seq_s"] > 0 for r in rows)
    assert saved["summary"]["ceiling_seq_s"] > 0
    phases = saved["phases"]
    assert all(p["errors"] == 0 for p in phases)
    assert {p["server"] for p in phases} == {"seqserve", "floor"}
    protocols = saved["reference"]["protocols"]
    encodings = {"v1_json", "v2_json", "v2_binary", "grpc"}
    assert set(protocols) >= encodings and set(protocols["low"]) >= encodings and protocols["low"]["concurrency"] == 1
    assert all(protocols[e]["throughput_seq_s"] > 0 and protocols["low"][e]["throughput_seq_s"] > 0 for e in encodings)
    text = readme.read_text()
    assert "old" not in text and "| c=4 |" in text and "| gRPC `ModelInfer`, raw contents |" in text and text.endswith("<!-- bench:end -->\n\nafter\n")


def test_readme_section_replaced_only_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nstale table\n<!-- bench:end -->\noutro\n")
    assert report.replace_section(readme, "| new | table |\n")
    assert readme.read_text() == "intro\n<!-- bench:start -->\n| new | table |\n<!-- bench:end -->\noutro\n"
    assert report.replace_section(readme, "again")
    assert readme.read_text() == "intro\n<!-- bench:start -->\nagain\n<!-- bench:end -->\noutro\n"


def test_readme_without_markers_is_left_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    assert not report.replace_section(readme, "table")
    assert readme.read_text() == "no markers here\n"
    assert not report.replace_section(tmp_path / "missing.md", "table")


@pytest.mark.slow
def test_ab_alternates_variants_and_reports_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import ab

    root = Path(__file__).resolve().parents[2]
    variants = ["{}", json.dumps({"source": str(root), "max_delay_ms": 0})]
    assert ab.main([*variants, "--rounds", "1", "--seconds", "0.5", "--concurrency", "2", "--work", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    means = [line for line in lines if ", mean of 1: " in line]
    assert [line.split(" ", 2)[1] for line in means] == ["0", "1"]
    assert all(" seq/s, loop " in line and line.endswith("errors 0") for line in means)
    assert (tmp_path / "variant-1.log").is_file()
