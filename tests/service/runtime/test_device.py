"""The GPU-or-CPU decision and the fall back to the CPU when the GPU fails."""

from __future__ import annotations

import logging
import sys

import pytest

import service.runtime.device as device_module
from service.repository import Entry, scan_repository
from service.runtime.base import RuntimeUnavailable
from service.runtime.device import DeviceChoice, ThreadSettings, open_runtime, select_device
from tests.service.conftest import BuiltRepository


@pytest.fixture
def feat(test_repository: BuiltRepository) -> Entry:
    [found] = [e for e in scan_repository(test_repository.path) if e.name == "feat" and e.version == 1]
    assert found.spec is not None
    return found


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def test_select_device_for_onnx(caplog: pytest.LogCaptureFixture) -> None:
    import onnxruntime

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
    feat: Entry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As if CUDA were listed but unusable (onnxruntime-gpu without the CUDA libraries)."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return  # a working GPU: nothing to fall back from (the GPU tests cover this machine)
    assert feat.spec is not None
    monkeypatch.setattr(device_module, "select_device", lambda requested, kind: DeviceChoice("cuda", "test"))
    prepared: list[str] = []
    with caplog.at_level(logging.WARNING):
        runtime, reason = open_runtime(
            "onnx", feat.files["onnx"], feat.spec, "cuda", ThreadSettings(), lambda r: prepared.append(r.device)
        )
    assert runtime.device == "cpu" and prepared == ["cpu"]
    assert "fell back to the CPU" in reason and "falling back to the CPU" in caplog.text


@pytest.mark.skipif(_torch_cuda(), reason="a working GPU: nothing to fall back from")
def test_torchscript_that_cannot_load_on_the_gpu_falls_back_to_the_cpu(
    feat: Entry, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert feat.spec is not None
    monkeypatch.setattr(device_module, "select_device", lambda requested, kind: DeviceChoice("cuda", "test"))
    runtime, reason = open_runtime("torchscript", feat.files["torchscript"], feat.spec, "cuda", ThreadSettings())
    assert runtime.device == "cpu"
    assert reason.startswith("opening on the GPU failed (") and reason.endswith("fell back to the CPU")


def test_torchscript_without_torch_is_unavailable(feat: Entry, monkeypatch: pytest.MonkeyPatch) -> None:
    assert feat.spec is not None
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.delitem(sys.modules, "service.runtime.torchscript", raising=False)
    with pytest.raises(RuntimeUnavailable, match="torch is not installed"):
        open_runtime("torchscript", feat.files["torchscript"], feat.spec, "auto", ThreadSettings())
    with pytest.raises(RuntimeUnavailable):
        open_runtime("torchscript", feat.files["torchscript"], feat.spec, "cpu", ThreadSettings())
