"""Export a user's module as it is, for a model no family fits.

The module itself is traced (called the way it is called on one sequence:
batch first or time first, with lengths equal to the time axis when it takes
them) into ONNX with dynamic batch and time axes, and into TorchScript. Each
graph is kept only if it answers like the module on equal-length batches of
several lengths, length 1 and the maximum included; the server then batches
only sequences of equal length together (``padding: "equal-length"``), so no
answer ever sees padding.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.export import INPUT_NAME, ONNX_OPSET, ExportError, _jit_load, _jit_trace, next_version, sha256
from models.parity import TOLERANCE, Failure, ParityError, Reference
from models.spec import Tokenizer
from service.model_json import (
    NAME_PATTERN,
    SCHEMA_VERSION,
    FormatsJson,
    GraphJson,
    InputJson,
    ModelJson,
    TokenizerJson,
)

OUTPUT_NAME = "output"


class AsIs(nn.Module):
    """``forward(x [B, T, ...]) -> the module's answer [B, ...]``, however the module takes its input."""

    def __init__(self, module: nn.Module, inputs: str) -> None:
        super().__init__()
        self.module = module
        self.time_major = inputs.startswith("time_major")
        self.lengths = inputs.endswith("and_lengths")

    def forward(self, x: Tensor) -> Tensor:
        batch, steps = x.shape[0], x.shape[1]
        if self.time_major:
            x = x.transpose(0, 1)
        if self.lengths:
            lengths = torch.ones(batch, dtype=torch.int64) * steps
            out = self.module(x, lengths)
        else:
            out = self.module(x)
        while isinstance(out, (tuple, list)):
            out = out[0]
        result: Tensor = out
        if self.time_major and result.ndim >= 3:
            result = result.transpose(0, 1)  # a per-step answer [T, B, O]
        return result


def equal_length_batches(
    input_size: int | None, vocabulary: int | None, max_length: int, batches: int, seed: int
) -> list[np.ndarray]:
    """Batches of one length each: length 1 and ``max_length`` first, then random lengths and sizes."""
    rng = np.random.default_rng(seed)
    lengths = [1, max_length] + [int(n) for n in rng.integers(1, max_length + 1, size=max(batches - 2, 0))]
    out = []
    for i, length in enumerate(lengths[:batches] if batches >= 2 else lengths[:2]):
        size = (1, 3, 2, 5)[i % 4]
        if vocabulary is not None:
            out.append(rng.integers(1, vocabulary, size=(size, length)).astype(np.int64))
        else:
            assert input_size is not None
            out.append(rng.standard_normal((size, length, input_size)).astype(np.float32))
    return out


def check_equal_length(
    graphs: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    reference: Reference,
    data: list[np.ndarray],
    tolerance: float,
) -> tuple[dict[str, float], list[Failure]]:
    worst = {name: 0.0 for name in graphs}
    failures: list[Failure] = []
    for b, x in enumerate(data):
        expected = [reference(x[i]) for i in range(len(x))]
        for name, run in graphs.items():
            try:
                got = np.asarray(run(x))
            except Exception as exc:  # a graph traced at one length may refuse another
                why = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                failures.append(Failure(name, b, len(x), 0, x.shape[1], x.shape[1], float("inf"), tolerance, why))
                continue
            for i in range(len(x)):
                want = expected[i]
                row = got[i] if i < len(got) else np.array([])
                if row.size != want.size:
                    why = f"answer shape {list(row.shape)}, the module's {list(want.shape)}"
                    failures.append(Failure(name, b, len(x), i, x.shape[1], x.shape[1], float("inf"), tolerance, why))
                    break
                diff = float(np.max(np.abs(row.reshape(want.shape).astype(np.float64) - want)))
                if not np.isfinite(diff) or diff > tolerance:
                    failures.append(Failure(name, b, len(x), i, x.shape[1], x.shape[1], diff, tolerance))
                worst[name] = max(worst[name], diff if np.isfinite(diff) else worst[name])
    return worst, failures


def export_as_is(
    module: nn.Module,
    inputs: str,
    reference: Reference,
    repository: Path,
    *,
    name: str,
    reason: str,
    input_size: int | None,
    tokenizer: Tokenizer | None,
    max_length: int,
    given: Mapping[str, Any],
    version: int | None = None,
    batches: int = 20,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    source: dict[str, Any] | None = None,
    reference_name: str = "user module",
) -> Path:
    """Write an equal-length entry of ``module`` or raise with nothing written."""
    if not NAME_PATTERN.match(name):
        raise ExportError(f"name {name!r}: use lowercase letters, digits, '.', '_' or '-' (max 64)")
    text = tokenizer is not None
    vocabulary = len(tokenizer.vocabulary) if tokenizer is not None else None
    wrapper = AsIs(module.eval(), inputs).eval()
    data = equal_length_batches(input_size, vocabulary, max_length, max(batches, 2), seed)
    example = torch.from_numpy(equal_length_batches(input_size, vocabulary, 9, 3, seed + 1)[2][:3])
    with torch.no_grad():
        probe = wrapper(example)
    per_step = probe.ndim == 3
    repository.mkdir(parents=True, exist_ok=True)
    version = version or next_version(repository, name)
    final = repository / name / str(version)
    if final.exists():
        raise ExportError(f"{final} exists already; versions are immutable, export as a new version")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repository))
    try:
        graphs: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        problems: list[str] = []
        onnx_path, ts_path = staging / "model.onnx", staging / "model.pt"
        try:
            dynamic = {
                INPUT_NAME: {0: "batch", 1: "time"},
                OUTPUT_NAME: {0: "batch", **({1: "time"} if per_step else {})},
            }
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper,
                    (example,),
                    str(onnx_path),
                    dynamo=False,
                    opset_version=ONNX_OPSET,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes=dynamic,
                )
            graphs["onnx"] = _no_lengths_onnx(str(onnx_path))
        except Exception as exc:  # torch cannot export every module; TorchScript may still do
            problems.append(f"ONNX: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            onnx_path.unlink(missing_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = _jit_trace(wrapper, (example,), check_trace=False)
                traced.save(str(ts_path))
                loaded = _jit_load(str(ts_path))
            graphs["torchscript"] = _torch_runner(loaded)
        except Exception as exc:
            problems.append(f"TorchScript: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            ts_path.unlink(missing_ok=True)
        worst, failures = check_equal_length(graphs, reference, data, tolerance)
        failed = {f.graph for f in failures}
        for graph in failed:
            problems.append(f"{graph}: " + next(f.describe() for f in failures if f.graph == graph))
            (onnx_path if graph == "onnx" else ts_path).unlink(missing_ok=True)
            worst.pop(graph)
        if not worst:
            checked = sum(len(x) for x in data)
            if failures:
                raise ParityError(failures, checked)
            raise ExportError("the module could not be exported as it is: " + "; ".join(problems))
        out_width = int(probe.shape[-1]) if probe.ndim >= 2 else 1
        task, labels, activation = _task(probe, given, per_step)
        formats = FormatsJson(
            onnx=onnx_path.name if "onnx" in worst else None,
            torchscript=ts_path.name if "torchscript" in worst else None,
        )
        tok_json = None
        if tokenizer is not None:
            tok_json = TokenizerJson(
                type=tokenizer.type,
                lowercase=tokenizer.lowercase,
                vocabulary=tokenizer.vocabulary,
                padding_id=tokenizer.padding_id,
                unknown_id=tokenizer.unknown_id,
                pattern=tokenizer.pattern,
            )
        files = [p for p in (onnx_path, ts_path) if p.exists()]
        informational: dict[str, Any] = {
            "architecture": {"as_is": True, "why": reason, "outputs": out_width},
            "family": "F10",
            "parity": {
                "tolerance": tolerance,
                "max_abs_diff": worst,
                "reference": reference_name,
                "batching": "equal lengths only",
            },
            "provenance": {
                "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "exporter": "seqserve export (as is)",
                "torch": torch.__version__,
                "files_sha256": {p.name: sha256(p) for p in files},
                "not_exported": problems,
                **(source or {}),
            },
        }
        meta = ModelJson(
            schema_version=SCHEMA_VERSION,
            name=name,
            version=version,
            task=task,
            description=str(given.get("description", "")),
            input=InputJson(
                kind="text" if text else "features",
                features=None if text else input_size,
                max_length=max_length,
                tokenizer=tok_json,
            ),
            labels=labels,
            output_names=given.get("output_names"),
            graph=GraphJson(
                input=INPUT_NAME,
                lengths=None,
                output=OUTPUT_NAME,
                input_dtype="int64" if text else "float32",
                output_activation=activation,
            ),
            padding="equal-length",
            formats=formats,
            **informational,
        )
        (staging / "model.json").write_text(meta.to_json())
        report = {
            "tolerance": tolerance,
            "reference": f"{reference_name}, run on each sequence alone",
            "batching": "equal lengths only",
            "batches": len(data),
            "sequences": sum(len(x) for x in data),
            "min_length": 1,
            "max_length": max_length,
            "max_abs_diff": worst,
        }
        (staging / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
        os.chmod(staging, 0o755)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _task(probe: Tensor, given: Mapping[str, Any], per_step: bool) -> tuple[Any, tuple[str, ...] | None, Any]:
    """Task, labels and what the server applies, from the module's answer (and the user's fields)."""
    width = int(probe.shape[-1]) if probe.ndim >= 2 else 1
    task = given.get("task") or ("regression" if width == 1 else ("tagging" if per_step else "classification"))
    if task == "regression":
        return task, None, "none"
    labels = tuple(given.get("labels") or [f"class_{i}" for i in range(width)])
    values = probe.double()
    if bool((values >= 0).all()) and bool(((values.sum(-1) - 1).abs() < 1e-5).all()):
        activation = "none"  # already probabilities
    elif bool(((values.exp().sum(-1) - 1).abs() < 1e-5).all()):
        activation = "exp"  # log-probabilities
    else:
        activation = "softmax"
    return task, labels, activation


def _no_lengths_onnx(path: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        outputs: list[np.ndarray] = session.run(None, {INPUT_NAME: x})
        return outputs[0]

    return run


def _torch_runner(module: torch.jit.ScriptModule) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: Tensor = module(torch.from_numpy(x))
            return out.numpy()

    return run
