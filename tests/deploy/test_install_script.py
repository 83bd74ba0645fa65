"""deploy/install.sh, the one install path of the Makefile (CI) and both images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deploy.local_cluster import free_port, stop_process, wait_until
from tests.deploy.conftest import ROOT

SCRIPT = ROOT / "deploy" / "install.sh"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("extras", ["cpu,gpu", "gpu,cpu", "export,cpu,test,gpu"])
def test_refuses_cpu_and_gpu_extras_together(extras: str, tmp_path: Path) -> None:
    result = run_script(str(tmp_path / "no-such-python"), extras)
    assert result.returncode == 2
    assert "exclude each other" in result.stderr


@pytest.mark.parametrize("args", [(), ("python",), ("python", "cpu", "--editabel"), ("python", "cpu", "-e", "x")])
def test_bad_usage_is_refused_before_installing_anything(args: tuple[str, ...]) -> None:
    result = run_script(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: deploy/install.sh PYTHON EXTRAS [--editable]")


@pytest.mark.slow
def test_the_cpu_image_environment_installs_into_a_fresh_venv_and_serves_without_torch(
    tmp_path: Path, feat_repository: Path
) -> None:
    """What the CPU image's server stage runs: a fresh venv, extras `cpu`, no torch, ONNX Runtime only."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    result = run_script(str(python), "cpu")
    assert result.returncode == 0, result.stdout + result.stderr

    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment = {k: v for k, v in environment.items() if not k.startswith("SEQSERVE_")}
    # Outside the checkout, so only what was installed can be imported.
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('onnxruntime') is not None)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=60,
        check=True,
    )
    assert probe.stdout.split() == ["None", "True"], probe.stdout

    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [
                str(venv / "bin" / "seqserve"),
                "serve",
                "--repository",
                str(feat_repository),
                "--port",
                str(port),
                "--grpc-port",
                "0",
            ],
            cwd=tmp_path,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            assert server.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 120, "server from the fresh venv ready")
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/models/feat/predict", json={"inputs": [[[0.1] * 5] * 3]}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["label"] in ("neg", "neu", "pos")
        info = httpx.get(f"http://127.0.0.1:{port}/v1/models/feat", timeout=10).json()
        assert "onnx" in str(info), info
    finally:
        assert stop_process(server) == 0, log_path.read_text()
