"""The demo training pipeline runs end to end and is deterministic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def train_quick(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "train",
            "--quick",
            "--demo",
            "vowels",
            "--demo",
            "sunspots",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def test_quick_training_is_deterministic_and_records_metrics(tmp_path: Path) -> None:
    first, second = train_quick(tmp_path / "a"), train_quick(tmp_path / "b")
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:]
    for name in ("vowels", "sunspots"):
        a = torch.load(tmp_path / "a" / f"{name}.pt", weights_only=True)
        b = torch.load(tmp_path / "b" / f"{name}.pt", weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        spec = (tmp_path / "a" / f"{name}.spec.json").read_text()
        assert '"held_out"' in spec and '"baseline"' in spec
