"""Export writes a whole entry or nothing, and every user mistake gets one
clear line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import models.export as export
from models.export import ExportError, export_model
from models.parity import ParityError
from models.spec import ModelSpec
from models.stack import SequenceModel

ROOT = Path(__file__).resolve().parents[2]


def small_spec(name: str = "tiny") -> ModelSpec:
    return ModelSpec(
        name=name,
        task="classification",
        cell="lstm",
        bidirectional=True,
        num_layers=1,
        hidden_size=8,
        input_size=3,
        num_outputs=2,
        labels=("no", "yes"),
        max_length=16,
    )


def seqserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqserve", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_entry_has_every_file_and_the_contract_fields(tmp_path: Path) -> None:
    entry = export_model(SequenceModel(small_spec()), tmp_path, batches=10)
    assert entry == tmp_path / "tiny" / "1"
    assert sorted(p.name for p in entry.iterdir()) == ["model.json", "model.onnx", "model.pt", "parity.json"]
    meta = json.loads((entry / "model.json").read_text())
    assert meta["graph"] == {
        "input": "input",
        "lengths": "lengths",
        "output": "logits",
        "input_dtype": "float32",
        "output_activation": "softmax",
    }
    assert meta["padding"] == "exact" and meta["labels"] == ["no", "yes"] and meta["version"] == 1
    assert not (entry / "model.onnx.data").exists()  # one self-contained file
    assert export_model(SequenceModel(small_spec()), tmp_path, batches=5) == tmp_path / "tiny" / "2"


def test_failed_parity_writes_nothing_and_names_the_worst_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export.write_torchscript

    def write_skewed_torchscript(model: SequenceModel, path: Path) -> None:
        skewed = SequenceModel(model.spec)
        skewed.load_state_dict(model.state_dict())
        with torch.no_grad():
            skewed.head.bias += 1e-3  # a graph that answers slightly differently
        real(skewed.eval(), path)

    monkeypatch.setattr(export, "write_torchscript", write_skewed_torchscript)
    with pytest.raises(ParityError) as failure:
        export_model(SequenceModel(small_spec()), tmp_path, batches=10)
    message = str(failure.value)
    assert "torchscript" in message and "worst:" in message and "max abs diff" in message
    assert "onnx" not in message.split("graphs:")[1].split(")")[0]  # only the broken graph is blamed
    assert list(tmp_path.iterdir()) == []  # no entry, no staging folder


def test_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    export_model(SequenceModel(small_spec()), tmp_path, version=3, batches=5)
    with pytest.raises(ExportError, match="immutable"):
        export_model(SequenceModel(small_spec()), tmp_path, version=3, batches=5)


def test_bad_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="name"):
        export_model(SequenceModel(small_spec("../escape")), tmp_path, batches=5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ck")
    model = SequenceModel(small_spec())
    torch.save(model.state_dict(), folder / "tiny.pt")
    model.spec.save(folder / "tiny.spec.json")
    return folder / "tiny.pt"


def test_cli_exports_a_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    result = seqserve("export", str(checkpoint), "--repository", str(tmp_path), "--parity-batches", "10")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and (tmp_path / "tiny" / "1" / "model.json").is_file()


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_cli_names_missing_and_misshapen_tensors(checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    del state["rnn.weight_hh_l0_reverse"]
    state["head.weight"] = torch.zeros(2, 99)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    line = one_error_line(
        seqserve(
            "export",
            str(bad),
            "--spec",
            str(checkpoint.with_suffix(".spec.json")),
            "--repository",
            str(tmp_path / "repo"),
        )
    )
    assert "missing rnn.weight_hh_l0_reverse" in line
    assert "head.weight has shape [2, 99], the spec needs [2, 16]" in line
    assert not (tmp_path / "repo").exists()


def test_cli_refuses_a_pickled_module(checkpoint: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "module.pt"
    torch.save(nn.LSTM(3, 8), pickled)  # the whole module, not a state_dict
    line = one_error_line(seqserve("export", str(pickled), "--spec", str(checkpoint.with_suffix(".spec.json"))))
    assert "not a weights-only checkpoint" in line and "state_dict" in line


def test_cli_refuses_a_file_that_is_not_a_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    line = one_error_line(seqserve("export", str(junk), "--spec", str(checkpoint.with_suffix(".spec.json"))))
    assert "not a torch checkpoint" in line


def test_cli_refuses_an_unknown_option_and_a_bad_spec(checkpoint: Path, tmp_path: Path) -> None:
    assert "--frobnicate" in one_error_line(seqserve("export", str(checkpoint), "--frobnicate"))
    spec = json.loads(checkpoint.with_suffix(".spec.json").read_text())
    spec["readout"] = "middle"
    bad_spec = tmp_path / "bad.spec.json"
    bad_spec.write_text(json.dumps(spec))
    assert "readout" in one_error_line(seqserve("export", str(checkpoint), "--spec", str(bad_spec)))
    missing = one_error_line(seqserve("export", str(tmp_path / "nope.pt"), "--spec", str(bad_spec)))
    assert "readout" in missing or "no such" in missing


def test_inspect_reads_the_architecture_off_the_names(checkpoint: Path) -> None:
    result = seqserve("inspect", str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert "family: F1" in result.stdout
    spec = json.loads(result.stdout.split("suggested spec")[1].split("\n", 1)[1])
    assert {
        k: spec[k] for k in ("cell", "hidden_size", "num_layers", "bidirectional", "input_size", "num_outputs")
    } == {"cell": "lstm", "hidden_size": 8, "num_layers": 1, "bidirectional": True, "input_size": 3, "num_outputs": 2}
    assert spec["names"]["prefixes"] == {}  # seqserve's own names need no mapping
