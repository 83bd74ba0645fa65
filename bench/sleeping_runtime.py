"""seqserve with the model's computation replaced by a sleep: what the HTTP front costs on its own.

    python -m bench.ab '{"runtime": "sleep"}' '{}'        # the same load, model stubbed against real

Run as `python -m bench.sleeping_runtime <seqserve serve flags>`. Every ONNX
batch sleeps as long as the reference model computes it on this machine
(`SECONDS_PER_CELL` per padded time step of each row, about 1.6 ms per
sequence of the benchmark's workload) and then runs the real graph on the
batch's first time step, so answers keep their shape and the request path
(HTTP, reading, validation, batching, answering) is the server's own. The
compute threads then take almost no CPU, and the event loop's CPU per
sequence is measured without the model competing for the same cores.
The patch is applied on import, so the HTTP worker processes, which import
this module again when they start (multiprocessing's `spawn`), have it too.
Answers are not the model's: a benchmark tool only, never a server.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from service.runtime.onnx import OnnxRuntime

SECONDS_PER_CELL = float(os.environ.get("SEQSERVE_BENCH_SECONDS_PER_CELL", "13.7e-6"))
"""The reference BiLSTM's time per padded row-step on one core here: 1.62 ms per sequence of mean length 105
at the window plan's padding efficiency 0.89 (`bench.ceiling`, 2026-11-30)."""

_real_predict = OnnxRuntime.predict


def _sleeping_predict(self: OnnxRuntime, batch: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    time.sleep(batch.shape[0] * batch.shape[1] * SECONDS_PER_CELL)
    first = np.ascontiguousarray(batch[:, :1])
    return _real_predict(self, first, None if lengths is None else np.minimum(lengths, 1))


OnnxRuntime.predict = _sleeping_predict  # type: ignore[method-assign]

if __name__ == "__main__":
    from service.__main__ import main

    sys.exit(main())
