"""Runtimes on the test repository's files: exact on padded batches, on the CPU and on a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.repository import scan_repository
from service.runtime import ThreadSettings, open_runtime
from service.runtime.cpu import cpu_cores
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


def test_onnx_on_the_cpu_runs_one_single_threaded_batch_per_core(test_repository: BuiltRepository) -> None:
    from service.runtime.onnx import OnnxRuntime

    feat = entry(test_repository, "feat")
    cores = cpu_cores()
    default = OnnxRuntime(feat.files["onnx"], feat.spec, device="cpu")
    assert default.concurrency == cores
    assert default._session.get_session_options().intra_op_num_threads == 1
    shared = OnnxRuntime(feat.files["onnx"], feat.spec, device="cpu", concurrency=1)
    assert shared.concurrency == 1
    assert shared._session.get_session_options().intra_op_num_threads == cores
    pinned = OnnxRuntime(feat.files["onnx"], feat.spec, device="cpu", threads=3, concurrency=2)
    assert (pinned.concurrency, pinned._session.get_session_options().intra_op_num_threads) == (2, 3)
