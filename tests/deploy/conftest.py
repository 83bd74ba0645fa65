"""Deployment tests: what runs them, and the cluster figures printed at the end of the run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES: dict[str, Any] = {}
"""Local-cluster figures, by phase: filled by test_local_cluster, printed in the terminal summary."""


def tool(name: str) -> str:
    """A command-line tool from the test extra (installed beside this Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: `make install` installs it with the test extra")
    return found


@pytest.fixture(scope="session")
def feat_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model (`feat`, a BiLSTM classifier, two versions) exported by seqserve's exporter."""
    from tests.service.conftest import build_test_repository

    built = tmp_path_factory.mktemp("built")
    build_test_repository(built)
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(built / "feat", root / "feat")
    return root


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("local cluster: 3 seqserve replicas behind nginx")
        for phase, figures in FIGURES.items():
            terminalreporter.write_line(f"{phase}: {json.dumps(figures)}")
