"""The benchmark's machinery at tiny settings: it runs, and writes what it promises. No timings asserted."""

from __future__ import annotations

import json
import re
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
    assert "old" not in text and "| c=4 |" in text and text.endswith("<!-- bench:end -->\n\nafter\n")
    # The README keeps the summary and links the whole run; the table holds every encoding and the plots.
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| gRPC `ModelInfer`, raw contents |" in table and "| gRPC `ModelInfer`, raw contents |" not in text
    assert "table.md" in text and "](./throughput_vs_concurrency.png)" in table


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
    variants = ["{}", json.dumps({"source": str(root), "max_delay_ms": 0}), '{"runtime": "sleep"}']
    assert (
        ab.main(
            [*variants, "--rounds", "1", "--seconds", "0.5", "--concurrency", "2", "--work", str(tmp_path), "--ceiling"]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    means = [line for line in lines if ", mean of 1: " in line]
    assert [line.split(" ", 2)[1] for line in means] == ["0", "1", "2"]
    assert all(" seq/s (" in line and " of the ceiling), loop " in line and line.endswith("errors 0") for line in means)
    # each variant's share is its throughput over the ceiling measured in the same round
    ceiling = float(next(line for line in lines if line.startswith("round 1 ceiling: ")).split()[3])
    for line in means:
        found = re.search(r" (\d+) seq/s \(([\d.]+) of the ceiling\)", line)
        assert found is not None
        assert float(found[2]) == pytest.approx(float(found[1]) / ceiling, abs=0.002)
    assert (tmp_path / "variant-1.log").is_file()
    # the sleeping runtime's batches cost its compute threads next to nothing: the model's work is a sleep
    workers = [float(re.search(r"workers ([\d.]+) ms/seq", line)[1]) for line in means]  # type: ignore[index]
    assert workers[2] < 0.5 * min(workers[:2])
    # gRPC ModelInfer calls instead of HTTP bodies, over as many connections as asked
    grpc = ["{}", "--body", "grpc", "--connections", "2", "--rounds", "1", "--seconds", "0.5", "--concurrency", "2"]
    assert ab.main([*grpc, "--work", str(tmp_path)]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if ", mean of 1: " in line]
    assert re.search(r": [1-9]\d* req/s, ", line) and line.endswith("errors 0"), line


def test_scaling_counts_go_up_to_the_cores() -> None:
    from bench.run import scaling_counts

    assert scaling_counts(1) == (1,)
    assert scaling_counts(2) == (1, 2)
    assert scaling_counts(6) == (1, 2, 4, 6)
    assert scaling_counts(64) == (1, 2, 4, 8, 16, 32, 64)


def _tiny_text_model(repository: Path) -> None:
    """A character-level GRU classifier like the `names` demo, untrained, through seqserve's exporter."""
    import torch

    from models.export import export_model
    from models.spec import ModelSpec, Tokenizer
    from models.stack import SequenceModel

    torch.manual_seed(5)
    tokenizer = Tokenizer(vocabulary=("<pad>", "<unk>", *"abcdefghijklmnopqrstuvwxyz"))
    spec = ModelSpec(
        name="chars",
        task="classification",
        cell="gru",
        hidden_size=8,
        input_kind="text",
        embedding_dim=6,
        tokenizer=tokenizer,
        max_length=24,
        num_outputs=2,
        labels=("a", "b"),
        readout="last",
    )
    export_model(SequenceModel(spec).eval(), repository, version=1, batches=2)


@pytest.mark.slow
def test_demo_models_and_the_scaling_phase(tmp_path: Path) -> None:
    """A demo model gets its row with the CPU outside the runtime per request, and the scaling phase a row per
    HTTP worker count and sequences per request."""
    demos = tmp_path / "demos"
    _tiny_text_model(demos)
    config = Config.quick(
        tmp_path / "work",
        concurrency=(1,),
        demo_repository=demos,
        scaling_model="chars",
        scaling_workers=(1, 2),
        scaling_per_request=(1, 3),
        binary_check=False,
        demo_concurrency=4,
    )
    results = Bench(config, lambda label: None).run()
    demo = results["demos"]["chars"]["seqserve"]
    assert (
        demo["throughput_req_s"] > 0 and demo["server_cpu_outside_runtime_ms_per_req"] < demo["server_cpu_ms_per_req"]
    )
    rows = results["scaling"]["rows"]
    assert [(r["per_request"], r["http_workers"]) for r in rows] == [(1, 1), (1, 2), (3, 1), (3, 2)]
    for r in rows:
        assert r["errors"] == 0
        assert r["throughput_seq_s"] == pytest.approx(r["throughput_req_s"] * r["per_request"], abs=0.2)
    assert any("chars, one per request" in name for name in results["summary"]["targets"])
    table = report.markdown(results, plots=[])
    assert "| 3 | 2 |" in table and "outside the runtime ms/req" in table
