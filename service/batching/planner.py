"""Which pending sequences go into the next batch: a pure function of their lengths.

The oldest pending sequence is always in the next batch (nothing starves);
around it, sequences of similar length are chosen so that padding stays low.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# NOTE: see `batch_cost`. On the CPU a recurrent step costs about two rows on top of
# its rows (a batch of one is far from free per step), and a call has a fixed overhead.
STEP_COST_ROWS = 2.0
BATCH_COST_CELLS = 16.0


def batch_cost(rows: int, longest: int) -> float:
    """The cost of one batch of `rows` sequences padded to `longest` steps, in units of one row
    for one time step: its padded cells, a fixed cost per step and a fixed cost per call."""
    return longest * (rows + STEP_COST_ROWS) + BATCH_COST_CELLS


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_batch_tokens: int
    max_delay_ms: float
    max_queue: int
    max_queued_tokens: int = 1 << 62
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
    """Choose the next batch from pending `lengths` [N] given oldest first; N >= 1.

    Pending sequences near the oldest one in length order are split into
    contiguous groups of least total cost (dynamic programming over the
    sorted lengths); the group holding the oldest sequence goes next.
    """
    if policy.equal_length:
        same = np.flatnonzero(lengths == lengths[0])
        cap = capacity(policy, int(lengths[0]))
        return Plan(same[:cap], full=len(same) >= cap)

    order = np.argsort(lengths, kind="stable")  # ties keep arrival order: the oldest comes first
    anchor = int(np.flatnonzero(order == 0)[0])
    first = max(0, anchor - policy.max_batch_size)
    window: list[int] = lengths[order[first : anchor + policy.max_batch_size + 1]].tolist()
    m = len(window)

    # best[j]: least cost of serving window[j:]; group[j]: end of the first group in that plan.
    best = [0.0] * (m + 1)
    group = [m] * (m + 1)
    # Indexed like `best`: room[i], fixed[i] and per_row[i] are for groups ending at window[i - 1].
    # NOTE: batch_cost is linear in rows, so it is read here once per length, as a fixed part
    # and a part per row, instead of once per candidate group in the inner loop.
    room = [0] + [capacity(policy, longest) for longest in window]
    fixed = [0.0] + [batch_cost(0, longest) for longest in window]
    per_row = [0.0] + [batch_cost(1, longest) - batch_cost(0, longest) for longest in window]
    for j in range(m - 1, -1, -1):
        best[j] = float("inf")
        for i in range(j + 1, m + 1):
            if i - j > room[i]:
                break
            cost = best[i] + fixed[i] + per_row[i] * (i - j)
            if cost <= best[j]:  # on a tie, the larger group
                best[j], group[j] = cost, i
    start = 0
    while group[start] <= anchor - first:
        start = group[start]
    stop = group[start]
    chosen = order[first + start : first + stop]
    cap = capacity(policy, window[stop - 1])
    return Plan(np.sort(chosen), full=len(chosen) >= cap)
