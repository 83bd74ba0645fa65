"""Parity's verdict names the tolerance it was asked to hold, whatever the module's default."""

from __future__ import annotations

import numpy as np
import pytest

from models.parity import TOLERANCE, ParityError, Runner, check_parity
from models.spec import ModelSpec

SPEC = ModelSpec(name="tiny", task="regression", cell="lstm", hidden_size=4, num_outputs=1, input_size=2, max_length=6)


def reference(sequence: np.ndarray) -> np.ndarray:
    """One output per sequence: the sum of its values."""
    return np.asarray([sequence.sum()], dtype=np.float64)


def graph_off_by(offset: float) -> Runner:
    def run(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return np.asarray([[float(x[i, :n].sum()) + offset] for i, n in enumerate(lengths)], dtype=np.float64)

    return run


@pytest.mark.parametrize("tolerance", [1e-6, 0.25])
def test_a_failure_names_the_tolerance_that_was_asked_for(tolerance: float) -> None:
    offset = 2 * tolerance
    with pytest.raises(ParityError) as failure:
        check_parity(SPEC, {"onnx": graph_off_by(offset)}, reference, batches=3, tolerance=tolerance)
    message = str(failure.value)
    assert f"max abs diff {offset:.3g} > {tolerance:g}" in message
    assert f"> {TOLERANCE:g}" not in message
    assert all(f.tolerance == tolerance for f in failure.value.failures)


def test_within_a_looser_tolerance_the_report_records_it() -> None:
    report = check_parity(SPEC, {"onnx": graph_off_by(1e-3)}, reference, batches=3, tolerance=1e-2)
    assert report.tolerance == 1e-2 and report.max_abs_diff["onnx"] == pytest.approx(1e-3)
