"""Which pending sequences go into the next batch: a pure function of their lengths.

The oldest pending sequence is always in the next batch (nothing starves);
around it, sequences of similar length are chosen so that padding stays low.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """Choose the next batch from pending `lengths` [N] given oldest first; N >= 1 (see `plan_positions`)."""
    positions, full = plan_positions(lengths.tolist(), policy)
    return Plan(np.asarray(positions, dtype=np.intp), full)


def plan_positions(lengths: Sequence[int], policy: BatchPolicy) -> tuple[list[int], bool]:
    """The next batch from pending `lengths` given oldest first (N >= 1): its positions, ascending, and
    whether it is full (no more sequences of its kind could join).

    Pending sequences near the oldest one in length order are split into
    contiguous groups of least total cost (dynamic programming over the
    sorted lengths); the group holding the oldest sequence goes next.
    """
    n = len(lengths)
    if policy.equal_length:
        oldest = lengths[0]
        cap = capacity(policy, oldest)
        same = [k for k in range(n) if lengths[k] == oldest]
        return same[:cap], len(same) >= cap

    order = sorted(range(n), key=lengths.__getitem__)  # stable: ties keep arrival order, the oldest first
    anchor = order.index(0)
    first = max(0, anchor - policy.max_batch_size)
    window = [lengths[k] for k in order[first : anchor + policy.max_batch_size + 1]]
    group = _least_cost_groups(window, policy)
    start = 0
    while group[start] <= anchor - first:
        start = group[start]
    stop = group[start]
    chosen = sorted(order[first + start : first + stop])
    return chosen, len(chosen) >= capacity(policy, window[stop - 1])


def _least_cost_groups(window: list[int], policy: BatchPolicy) -> list[int]:
    """For sorted lengths `window` [m]: `group[j]`, the end (exclusive) of the first group in a least-cost
    split of `window[j:]` into groups, each within the capacity of its longest; on a tie, the larger group.

    best[j] = min over ends i in (j, hi_j] of best[i] + fixed(i) + per_row(i) * (i - j), where fixed and
    per_row are `batch_cost`'s parts for a group whose longest is window[i - 1], and hi_j is the last end
    the capacity allows (a prefix: capacity falls as lengths grow). Ends whose longest is the same length
    form a run with one per_row p, so within a run the least cost for j is the least `score`
    (best[i] + fixed(i) + p * i) less p * j: a run wholly inside (j, hi_j] answers from its least score,
    the run holding hi_j from a least score of its ends up to hi_j, the run holding j + 1 from those seen
    since it began. Per j that is O(runs in reach), not O(capacity): few runs when lengths repeat.
    NOTE: costs are integers (integer lengths and cost constants), so `score - p * j` equals the direct sum.
    """
    m = len(window)
    run_of = [0] * (m + 1)  # ends 1..m: the run of window[i - 1]
    run_first: list[int] = []  # a run's smallest end
    run_last: list[int] = []  # and its largest
    room: list[int] = []
    fixed: list[float] = []
    per_row: list[float] = []
    for i in range(1, m + 1):
        longest = window[i - 1]
        if i == 1 or longest != window[i - 2]:
            if run_first:
                run_last.append(i - 1)
            run_first.append(i)
            room.append(capacity(policy, longest))
            fixed.append(batch_cost(0, longest))
            per_row.append(batch_cost(1, longest) - batch_cost(0, longest))
        run_of[i] = len(run_first) - 1
    run_last.append(m)

    settled = [0.0] * (m + 1)  # best[i] + fixed(i)
    score = [0.0] * (m + 1)  # settled[i] + per_row(i) * i
    # least score of a run's ends so far (the larger end on ties), and of a whole run's ends up to each
    seen: list[tuple[float, int]] = [(0.0, 0)] * len(run_first)
    upto: list[list[tuple[float, int]]] = [[] for _ in run_first]
    group = [m] * (m + 1)
    best_next = 0.0  # best[j + 1]
    hi = m
    for j in range(m - 1, -1, -1):
        i = j + 1  # an end whose best is now known
        r = run_of[i]
        settled[i] = (best_next if i < m else 0.0) + fixed[r]
        score[i] = settled[i] + per_row[r] * i
        if i == run_last[r] or score[i] < seen[r][0]:
            seen[r] = (score[i], i)
        if i == run_first[r]:
            low = (float("inf"), 0)
            mins = []
            for x in range(i, run_last[r] + 1):
                if score[x] <= low[0]:
                    low = (score[x], x)
                mins.append(low)
            upto[r] = mins
        while hi - j > room[run_of[hi]]:
            hi -= 1
        last = run_of[hi]
        best, end = float("inf"), m
        if r == last:  # (j, hi] within one run
            for x in range(i, hi + 1):
                cost = settled[x] + per_row[r] * (x - j)
                if cost <= best:
                    best, end = cost, x
        else:
            candidates = [seen[r], *seen[r + 1 : last], upto[last][hi - run_first[last]]]
            for q, (s, x) in enumerate(candidates, start=r):
                cost = s - per_row[q] * j
                if cost <= best:
                    best, end = cost, x
        best_next = best
        group[j] = end
    return group
