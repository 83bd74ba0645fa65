"""`seqserve train --portable` takes the same arithmetic path whatever the CPU offers.

Another machine is stood in for by the switches that make PyTorch and oneDNN pick other kernels
here: PyTorch's kernels without vector extensions, oneDNN limited to SSE4.1. Portable training pins
its own path (`models.cli.TRAIN_ENVIRONMENT`, no oneDNN), so the checkpoints are identical bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}
CHOOSERS = {*OTHER_CPU, "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS"}
"""Variables that choose kernels; the machine's own choice is what is left without them."""


def train_quick(out: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in CHOOSERS}
    return subprocess.run(
        [sys.executable, "-m", "seqserve", "train", "--quick", "--portable", "--demo", "vowels", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**environment, **extra},
        timeout=900,
    )


def test_a_cpu_with_other_vector_extensions_trains_the_same_weights(tmp_path: Path) -> None:
    here, other = train_quick(tmp_path / "here", {}), train_quick(tmp_path / "other", OTHER_CPU)
    assert here.returncode == 0 and other.returncode == 0, (here.stderr + other.stderr)[-3000:]
    assert "figures may differ" not in here.stderr + other.stderr
    a = torch.load(tmp_path / "here" / "vowels.pt", weights_only=True)
    b = torch.load(tmp_path / "other" / "vowels.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
