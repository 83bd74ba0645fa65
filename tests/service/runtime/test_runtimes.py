"""Runtimes on the test repository's files: exact on padded batches, device choice, fallbacks."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from service import runtime as runtime_package
from service.repository import scan_repository
from service.runtime import DeviceChoice, RuntimeUnavailable, ThreadSettings, open_runtime, select_device
from tests.service.conftest import BuiltRepository


def entry(repository: BuiltRepository, name: str, version: int = 1):  # type: ignore[no-untyped-def]
    return next(e for e in scan_repository(repository.path) if e.name == name and e.version == version)


def padded_batch(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    longest = max(len(s) for s in sequences)
    batch = np.zeros((len(sequences), longest, sequences[0].shape[1]), np.float32)
    for row, seq in enumerate(sequences):
        batch[row, : len(seq)] = seq
    return batch, np.array([len(s) for s in sequences], np.int64)


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_padded_batches_match_each_sequence_alone(test_repository: BuiltRepository, kind: str) -> None:
    feat = entry(test_repository, "feat")
    assert feat.spec is not None
    runtime, reason = open_runtime(kind, feat.files[kind], feat.spec, "cpu", ThreadSettings())  # type: ignore[arg-type]
    assert (runtime.name, runtime.device, reason) == (kind, "cpu", "device=cpu was requested")
    rng = np.random.default_rng(3)
    sequences = [rng.normal(size=(n, 5)).astype(np.float32) for n in (1, 17, 40, 3, 9)]
    out = runtime.predict(*padded_batch(sequences))
    for row, seq in enumerate(sequences):
        np.testing.assert_allclose(out[row], test_repository.references["feat"](seq.tolist()), atol=1e-4, rtol=0)


def test_onnx_refuses_a_graph_whose_names_differ_from_model_json(test_repository: BuiltRepository) -> None:
    feat = entry(test_repository, "feat")
    assert feat.spec is not None
    spec = feat.spec.model_copy(update={"graph": feat.spec.graph.model_copy(update={"lengths": "lens", "output": "y"})})
    with pytest.raises(ValueError, match=r"graph has no input 'lens'.*graph has no output 'y'"):
        open_runtime("onnx", feat.files["onnx"], spec, "cpu", ThreadSettings())


def test_select_device_for_onnx(caplog: pytest.LogCaptureFixture) -> None:
    import onnxruntime  # type: ignore[import-untyped]

    assert select_device("cpu", "onnx").device == "cpu"
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert select_device("auto", "onnx").device == "cuda"
        assert select_device("cuda", "onnx").device == "cuda"
        return
    assert select_device("auto", "onnx").device == "cpu"
    with caplog.at_level(logging.WARNING):
        choice = select_device("cuda", "onnx")
    assert choice.device == "cpu" and "fell back to the CPU" in choice.reason
    assert "device=cuda was requested" in caplog.text


def test_a_gpu_that_does_not_work_falls_back_to_the_cpu(
    test_repository: BuiltRepository, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As if CUDA were listed but unusable (onnxruntime-gpu without the CUDA libraries)."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return  # a working GPU: nothing to fall back from (the GPU tests cover this machine)
    feat = entry(test_repository, "feat")
    assert feat.spec is not None
    monkeypatch.setattr(runtime_package, "select_device", lambda requested, kind: DeviceChoice("cuda", "test"))
    prepared: list[str] = []
    with caplog.at_level(logging.WARNING):
        runtime, reason = open_runtime(
            "onnx", feat.files["onnx"], feat.spec, "cuda", ThreadSettings(), lambda r: prepared.append(r.device)
        )
    assert runtime.device == "cpu" and prepared == ["cpu"]
    assert "fell back to the CPU" in reason and "falling back to the CPU" in caplog.text


def test_torchscript_without_torch_is_unavailable(
    test_repository: BuiltRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    feat = entry(test_repository, "feat")
    assert feat.spec is not None
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.delitem(sys.modules, "service.runtime.torchscript", raising=False)
    with pytest.raises(RuntimeUnavailable, match="torch is not installed"):
        open_runtime("torchscript", feat.files["torchscript"], feat.spec, "auto", ThreadSettings())
    with pytest.raises(RuntimeUnavailable):
        open_runtime("torchscript", feat.files["torchscript"], feat.spec, "cpu", ThreadSettings())


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_torchscript_on_the_gpu_is_exact(test_repository: BuiltRepository) -> None:
    feat = entry(test_repository, "feat")
    assert feat.spec is not None
    runtime, _ = open_runtime("torchscript", feat.files["torchscript"], feat.spec, "cuda", ThreadSettings())
    assert runtime.device == "cuda"
    rng = np.random.default_rng(4)
    sequences = [rng.normal(size=(n, 5)).astype(np.float32) for n in (1, 12, 40)]
    out = runtime.predict(*padded_batch(sequences))
    for row, seq in enumerate(sequences):
        np.testing.assert_allclose(out[row], test_repository.references["feat"](seq.tolist()), atol=1e-4, rtol=0)


def _onnx_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers() and _cuda()


@pytest.mark.gpu
@pytest.mark.skipif(not _onnx_cuda(), reason="needs onnxruntime-gpu and a CUDA device")
def test_onnx_on_the_gpu_is_exact(test_repository: BuiltRepository, tmp_path: Path) -> None:
    feat = entry(test_repository, "feat")
    assert feat.spec is not None
    runtime, reason = open_runtime("onnx", feat.files["onnx"], feat.spec, "cuda", ThreadSettings())
    assert runtime.device == "cuda", reason
    rng = np.random.default_rng(5)
    sequences = [rng.normal(size=(n, 5)).astype(np.float32) for n in (2, 30)]
    out = runtime.predict(*padded_batch(sequences))
    for row, seq in enumerate(sequences):
        np.testing.assert_allclose(out[row], test_repository.references["feat"](seq.tolist()), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, 1.5 cores: rounded up
        ({"cpu.max": "max 100000\n"}, None),  # cgroup v2 without a quota
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cpu_cores_follow_a_container_cpu_quota(tmp_path: Path, files: dict[str, str], limit: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    available = runtime_package.cpu_cores(tmp_path / "absent")
    expected = available if limit is None else min(available, limit)
    assert runtime_package.cpu_cores(tmp_path) == expected


def test_onnx_on_the_cpu_runs_one_single_threaded_batch_per_core(test_repository: BuiltRepository) -> None:
    from service.runtime.onnx import OnnxRuntime

    feat = entry(test_repository, "feat")
    cores = runtime_package.cpu_cores()
    default = OnnxRuntime(feat.files["onnx"], feat.spec, device="cpu")
    assert default.concurrency == cores
    assert default._session.get_session_options().intra_op_num_threads == 1
    shared = OnnxRuntime(feat.files["onnx"], feat.spec, device="cpu", concurrency=1)
    assert shared.concurrency == 1
    assert shared._session.get_session_options().intra_op_num_threads == cores
    pinned = OnnxRuntime(feat.files["onnx"], feat.spec, device="cpu", threads=3, concurrency=2)
    assert (pinned.concurrency, pinned._session.get_session_options().intra_op_num_threads) == (2, 3)
