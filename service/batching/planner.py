"""Which pending sequences go into the next batch: a pure function of their lengths.

The oldest pending sequence is always in the next batch (nothing starves);
around it, sequences of similar length are chosen so that padding stays low.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# NOTE: cost model of one batch, in units of "one row for one time step":
# cost = longest * (rows + STEP_COST_ROWS) + BATCH_COST_CELLS. A recurrent
# step has a fixed cost worth about two rows on CPU (FINDINGS.md: batch 1 ran
# 25 us/step, batch 32 about 270 us/step), and a call has a fixed overhead.
STEP_COST_ROWS = 2.0
BATCH_COST_CELLS = 16.0


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_batch_tokens: int
    max_delay_ms: float
    max_queue: int
    # Graphs without a lengths input batch only sequences of equal length.
    equal_length: bool = False


@dataclass(frozen=True)
class Plan:
    indices: np.ndarray  # positions in the pending list (arrival order), [B]
    full: bool  # no more sequences of this kind could join


def capacity(policy: BatchPolicy, longest: int) -> int:
    """Most sequences a batch padded to `longest` may hold (at least one)."""
    return max(1, min(policy.max_batch_size, policy.max_batch_tokens // longest))


def plan_batch(lengths: np.ndarray, policy: BatchPolicy) -> Plan:
    """Choose the next batch from pending `lengths` [N] given oldest first; N >= 1."""
    n = len(lengths)
    if policy.equal_length:
        same = np.flatnonzero(lengths == lengths[0])
        cap = capacity(policy, int(lengths[0]))
        return Plan(same[:cap], full=len(same) >= cap)

    order = np.argsort(lengths, kind="stable")  # ties keep arrival order
    anchor = int(np.flatnonzero(order == 0)[0])
    span = min(policy.max_batch_size, n)
    first = max(0, anchor - span + 1)
    last = min(n - 1, anchor + span - 1)
    window = lengths[order[first : last + 1]].astype(np.float64)
    cumulative = np.concatenate(([0.0], np.cumsum(window)))

    # Every contiguous run [lo, hi] of the sorted window that holds the anchor.
    lo = np.arange(first, anchor + 1)[:, None] - first
    hi = np.arange(anchor, last + 1)[None, :] - first
    rows = hi - lo + 1
    longest = window[hi]
    real = cumulative[hi + 1] - cumulative[lo]
    cost = longest * (rows + STEP_COST_ROWS) + BATCH_COST_CELLS
    allowed = (rows <= policy.max_batch_size) & ((rows == 1) | (rows * longest <= policy.max_batch_tokens))
    score = np.where(allowed, real / cost, -1.0)
    best_lo, best_hi = np.unravel_index(int(np.argmax(score)), score.shape)
    start, stop = first + int(best_lo), anchor + int(best_hi)
    chosen = order[start : stop + 1]
    cap = capacity(policy, int(lengths[order[stop]]))
    return Plan(np.sort(chosen), full=len(chosen) >= cap)
