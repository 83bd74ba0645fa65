"""The GPU flavour on a machine without a GPU: onnxruntime-gpu lists CUDAExecutionProvider without the CUDA
libraries, so `auto` picks the GPU, the session drops the provider, and `service.runtime.device` falls back.

Installs the `gpu` extra (onnxruntime-gpu, ~256 MB) into its own venv through `deploy/install.sh`, so it runs only
with SEQSERVE_GPU_FALLBACK_TEST=1: `make gpu-fallback-test`. The venv (build/gpu-fallback-<hash of constraints.txt>)
is reused; seqserve itself is reinstalled into it every run. Servers listen on 127.0.0.1 and free ports, gRPC off;
each is ended by its PID, also on failure. Figures (install time, ready time, max difference) are printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.deploy.conftest import ROOT
from tests.deploy.test_image import _inputs, _max_difference
from tests.service.api.conftest import Server, free_port, run_server, stop

pytestmark = pytest.mark.skipif(
    os.environ.get("SEQSERVE_GPU_FALLBACK_TEST") != "1",
    reason="installs onnxruntime-gpu (~256 MB) into a venv of its own and serves the demo repository from it: "
    "`make gpu-fallback-test` runs these tests with SEQSERVE_GPU_FALLBACK_TEST=1",
)

REPOSITORY = Path(os.environ.get("SEQSERVE_GPU_FALLBACK_REPOSITORY", ROOT / "repository"))
DEMOS = ("names", "sunspots", "vowels")
READY_BOUND_SECONDS = 90.0
TOLERANCE = 1e-6
FALLBACK_LINE = re.compile(
    r"WARNING service\.runtime\.device(?: \[http \d+\])?: (\w+)/(\d+): .*falling back to the CPU"
)
PROCESSES_LINE = re.compile(r"INFO service: (\d+) HTTP process")
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[dict[str, Any]]:
    yield FIGURES
    if FIGURES:
        print(f"\ngpu-fallback figures: {json.dumps(FIGURES)}")


@pytest.fixture(scope="module")
def gpu_python() -> Path:
    """A venv with the `gpu` extra, keyed by constraints.txt; seqserve is (re)installed into it by install.sh."""
    key = hashlib.sha256((ROOT / "constraints.txt").read_bytes()).hexdigest()[:12]
    venv = ROOT / "build" / f"gpu-fallback-{key}"
    python = venv / "bin" / "python"
    reused = python.exists()
    started = time.monotonic()
    if not reused:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [str(ROOT / "deploy" / "install.sh"), str(python), "gpu"], capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stdout + result.stderr
    FIGURES["install"] = {"venv": str(venv), "reused": reused, "seconds": round(time.monotonic() - started, 1)}
    return python


def test_onnxruntime_gpu_lists_cuda_without_a_gpu(gpu_python: Path) -> None:
    """The trap: the provider is listed although no CUDA library is there to load it."""
    probe = "import json, onnxruntime as o; print(json.dumps([o.__version__, o.get_available_providers()]))"
    version, providers = json.loads(
        subprocess.run([str(gpu_python), "-c", probe], capture_output=True, text=True, check=True, timeout=60).stdout
    )
    frozen = subprocess.run(
        [str(gpu_python), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    FIGURES["onnxruntime"] = {"version": version, "providers": providers}
    assert "CUDAExecutionProvider" in providers, providers
    assert "onnxruntime-gpu==" in frozen and "\nonnxruntime==" not in f"\n{frozen}", frozen
    assert "torch==" not in frozen  # the server's extra only


@contextlib.contextmanager
def gpu_server(python: Path, repository: Path, device: str, log_dir: Path) -> Iterator[tuple[Server, float]]:
    """`seqserve serve` from the GPU venv (its own installed copy: no PYTHONPATH, cwd outside the checkout)."""
    port = free_port()
    log_path = log_dir / f"gpu-{device}-{port}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SEQSERVE_") and k != "PYTHONPATH"}
    environment.update(
        {
            "PYTHONUNBUFFERED": "1",
            "SEQSERVE_HOST": "127.0.0.1",
            "SEQSERVE_PORT": str(port),
            "SEQSERVE_GRPC_PORT": "0",
            "SEQSERVE_DEVICE": device,
            "SEQSERVE_REPOSITORY": str(repository),
        }
    )
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(python.parent / "seqserve"), "serve"],
            cwd=log_dir,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}:\n{server.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() - started > READY_BOUND_SECONDS:
                raise AssertionError(f"not ready within {READY_BOUND_SECONDS} s:\n{server.log()}")
            time.sleep(0.05)
        yield server, time.monotonic() - started
    finally:
        stop(process)


def _fallback_counts(log: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for match in FALLBACK_LINE.finditer(log):
        key = f"{match[1]}/{match[2]}"
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_falls_back_to_the_cpu_once_per_version_and_answers_as_the_cpu_flavour(
    gpu_python: Path, device: str, tmp_path: Path
) -> None:
    if not all((REPOSITORY / name / "1" / "model.json").exists() for name in DEMOS):
        pytest.fail(f"demo repository missing at {REPOSITORY}: `make models` builds it")
    repository = tmp_path / "repository"
    shutil.copytree(REPOSITORY, repository)
    rng = np.random.default_rng(7)
    differences: dict[str, float] = {}
    streaming: dict[str, bool] = {}
    identical = True
    with (
        run_server(repository, log_dir=tmp_path) as cpu,
        gpu_server(gpu_python, repository, device, tmp_path) as (
            gpu,
            ready_seconds,
        ),
    ):
        models = httpx.get(f"{gpu.url}/v1/models", timeout=10).json()["models"]
        versions = {f"{m['name']}/{v['version']}": v for m in models for v in m["versions"]}
        assert sorted(m["name"] for m in models) == sorted(DEMOS), models
        for key, version in versions.items():
            assert version["state"] == "ready" and version["device"] == "cpu", (key, version)
            reason = version["device_reason"] or ""
            assert "CUDA" in reason and "fell back to the CPU" in reason, (key, reason)
        loaded_log = gpu.log()
        for name in DEMOS:
            metadata = httpx.get(f"{gpu.url}/v1/models/{name}", timeout=10).json()
            streaming[name] = metadata["streaming"]
            inputs = _inputs(metadata, rng)
            worst = 0.0
            for body in [{"inputs": inputs}, *({"inputs": [one]} for one in inputs)]:
                answers = [
                    httpx.post(f"{url}/v1/models/{name}/predict", json=body, timeout=30) for url in (cpu.url, gpu.url)
                ]
                for answer in answers:
                    assert answer.status_code == 200, answer.text
                cpu_json, gpu_json = (answer.json() for answer in answers)
                identical &= cpu_json == gpu_json
                worst = max(worst, _max_difference(cpu_json, gpu_json))
            differences[name] = worst
        log = gpu.log()
    counts = _fallback_counts(log)
    ort_errors = log.count("Failed to create CUDAExecutionProvider")
    FIGURES[device] = {
        "ready_seconds": round(ready_seconds, 2),
        "fallback_lines": counts,
        "onnxruntime_provider_errors": ort_errors,
        "device_reason": sorted({v["device_reason"] for v in versions.values()}),
        "max_abs_difference": differences,
        "identical": identical,
    }
    # once per session opened for CUDA (a streaming version has two graphs), in each HTTP process (`auto` runs
    # one per core: no GPU is visible); none per batch
    found = PROCESSES_LINE.search(log)
    assert found is not None, log
    processes = int(found[1])
    sessions = {key: 2 if streaming[key.split("/")[0]] else 1 for key in versions}
    assert counts == {key: n * processes for key, n in sessions.items()}, log
    assert ort_errors == sum(counts.values()), log
    assert log[len(loaded_log) :].count("CUDA") == 0, log[len(loaded_log) :]  # nothing about the GPU while answering
    assert "Traceback" not in log, log
    assert max(differences.values()) <= TOLERANCE, differences
