"""Parity: exported graphs on padded mixed-length batches vs the reference
module run on each sequence alone.

Checked the way a careful exporter checks (names, then shapes, then values),
gathering every failure before raising one error that lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from models.spec import ModelSpec

TOLERANCE = 1e-4
"""Max abs difference allowed between any graph and the reference (float32)."""

BATCH_SIZES = (1, 2, 4, 5, 8, 13, 16, 32)
"""Batch sizes the check cycles through, so sizes other than the one the export
traces with (``models.export.example_inputs``) are checked."""

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(padded [B, T, ...], lengths [B]) -> outputs``, as a served graph is called."""

Reference = Callable[[np.ndarray], np.ndarray]
"""``(one unpadded sequence [T, ...]) -> its output``."""


@dataclass(frozen=True)
class Failure:
    graph: str
    batch: int
    batch_size: int
    position: int
    length: int
    padded_to: int
    max_abs_diff: float
    tolerance: float
    """The tolerance the check was asked for, which ``max_abs_diff`` exceeded."""
    problem: str = "values"

    def describe(self) -> str:
        where = (
            f"{self.graph}: batch {self.batch} (size {self.batch_size}, padded to {self.padded_to}), "
            f"sequence {self.position} of length {self.length}"
        )
        if self.problem != "values":
            return f"{where}: {self.problem}"
        return f"{where}: max abs diff {self.max_abs_diff:.3g} > {self.tolerance:g}"


class ParityError(RuntimeError):
    """Some exported graph disagreed with the reference; nothing was written."""

    def __init__(self, failures: list[Failure], checked: int) -> None:
        self.failures = failures
        worst = max(failures, key=lambda f: (f.problem != "values", f.max_abs_diff))
        graphs = sorted({f.graph for f in failures})
        super().__init__(
            f"parity failed for {len(failures)} of {checked} checked sequence outputs "
            f"(graphs: {', '.join(graphs)}); worst: {worst.describe()}"
        )


@dataclass
class ParityReport:
    tolerance: float
    batches: int
    sequences: int
    lengths_checked: tuple[int, int]
    batch_sizes: list[int]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    reference_name: str = "seqserve reference"

    def to_dict(self) -> dict[str, object]:
        return {
            "tolerance": self.tolerance,
            "reference": f"{self.reference_name}, run on each sequence alone, unpadded",
            "batches": self.batches,
            "sequences": self.sequences,
            "min_length": self.lengths_checked[0],
            "max_length": self.lengths_checked[1],
            "batch_sizes": self.batch_sizes,
            "max_abs_diff": self.max_abs_diff,
        }


def random_batches(spec: ModelSpec, batches: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Padded inputs and lengths; the first batch holds length 1 and the max length."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(batches):
        size = BATCH_SIZES[b % len(BATCH_SIZES)]
        lengths = rng.integers(1, spec.max_length + 1, size=size)
        if b == 0:
            lengths = np.concatenate([[1, spec.max_length], lengths])[: max(size, 2)]
        lengths = lengths.astype(np.int64)
        steps = int(lengths.max())
        if spec.input_kind == "text":
            assert spec.tokenizer is not None
            x = rng.integers(1, len(spec.tokenizer.vocabulary), size=(len(lengths), steps)).astype(np.int64)
            pad = spec.tokenizer.padding_id
        else:
            assert spec.input_size is not None
            x = rng.standard_normal((len(lengths), steps, spec.input_size)).astype(np.float32)
            norm = spec.input_normalization
            if norm is not None:
                x = (x * np.asarray(norm.std, np.float32) + np.asarray(norm.mean, np.float32)).astype(np.float32)
            pad = 0
        for i, n in enumerate(lengths):
            x[i, n:] = pad
        out.append((x, lengths))
    return out


def check_parity(
    spec: ModelSpec,
    graphs: Mapping[str, Runner],
    reference: Reference,
    batches: int = 100,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    reference_name: str = "seqserve reference",
) -> ParityReport:
    """Run every graph on the same random batches; raise ``ParityError`` listing
    every sequence whose output is off, or return the measured worst diffs."""
    data = random_batches(spec, batches, seed)
    tagging = spec.readout == "all"  # an answer per step
    failures: list[Failure] = []
    worst = {name: 0.0 for name in graphs}
    checked = 0
    for b, (x, lengths) in enumerate(data):
        expected = [reference(x[i, : lengths[i]]) for i in range(len(lengths))]
        for name, run in graphs.items():
            got = np.asarray(run(x, lengths))
            want_shape = (len(lengths), x.shape[1], spec.num_outputs) if tagging else (len(lengths), spec.num_outputs)
            if got.shape != want_shape:
                failures.append(
                    Failure(
                        name,
                        b,
                        len(lengths),
                        0,
                        int(lengths[0]),
                        x.shape[1],
                        float("inf"),
                        tolerance,
                        f"output shape {got.shape}, expected {want_shape}",
                    )
                )
                continue
            for i, n in enumerate(lengths):
                checked += 1
                row = got[i, :n] if tagging else got[i]
                diff = float(np.max(np.abs(row.astype(np.float64) - expected[i])))
                if not np.isfinite(diff) or diff > tolerance:
                    failures.append(Failure(name, b, len(lengths), i, int(n), x.shape[1], diff, tolerance))
                elif diff > worst[name]:
                    worst[name] = diff
    if failures:
        raise ParityError(failures, checked)
    all_lengths = np.concatenate([lengths for _, lengths in data])
    return ParityReport(
        tolerance=tolerance,
        batches=batches,
        sequences=int(all_lengths.size),
        lengths_checked=(int(all_lengths.min()), int(all_lengths.max())),
        batch_sizes=sorted({len(lengths) for _, lengths in data}),
        max_abs_diff=worst,
        reference_name=reference_name,
    )


def torch_runner(module: torch.nn.Module | torch.jit.ScriptModule) -> Runner:
    def run(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: torch.Tensor = module(torch.from_numpy(x), torch.from_numpy(lengths))
            return out.numpy()

    return run


def onnx_runner(path: str, input_name: str = "input", lengths_name: str = "lengths") -> Runner:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        outputs: list[np.ndarray] = session.run(None, {input_name: x, lengths_name: lengths})
        return outputs[0]

    return run
