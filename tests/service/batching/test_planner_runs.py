"""`plan_positions` groups ends of equal length into runs; it must choose exactly what the direct
dynamic programme over every pair of group start and end chooses."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.batching.planner import BatchPolicy, batch_cost, capacity, plan_batch, plan_positions


def direct_plan(lengths: list[int], policy: BatchPolicy) -> tuple[list[int], bool]:
    """The planner written plainly: every (start, end) pair of the window, the larger group on a tie."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    anchor = order.index(0)
    first = max(0, anchor - policy.max_batch_size)
    window = [lengths[k] for k in order[first : anchor + policy.max_batch_size + 1]]
    m = len(window)
    best = [0.0] * (m + 1)
    group = [m] * (m + 1)
    for j in range(m - 1, -1, -1):
        best[j] = float("inf")
        for i in range(j + 1, m + 1):
            if i - j > capacity(policy, window[i - 1]):
                break
            cost = best[i] + batch_cost(i - j, window[i - 1])
            if cost <= best[j]:
                best[j], group[j] = cost, i
    start = 0
    while group[start] <= anchor - first:
        start = group[start]
    chosen = sorted(order[first + start : first + group[start]])
    return chosen, len(chosen) >= capacity(policy, window[group[start] - 1])


@settings(max_examples=400, deadline=None)
@given(
    lengths=st.one_of(
        st.lists(st.integers(1, 6), min_size=1, max_size=90),  # long runs of equal lengths
        st.lists(st.integers(1, 300), min_size=1, max_size=90),  # mostly distinct
    ),
    max_batch_size=st.integers(1, 70),
    max_batch_tokens=st.integers(1, 2000),
)
def test_runs_choose_what_the_direct_programme_chooses(
    lengths: list[int], max_batch_size: int, max_batch_tokens: int
) -> None:
    policy = BatchPolicy(max_batch_size, max_batch_tokens, max_delay_ms=2.0, max_queue=1024)
    expected = direct_plan(lengths, policy)
    assert plan_positions(lengths, policy) == expected
    plan = plan_batch(np.array(lengths), policy)
    assert (plan.indices.tolist(), plan.full) == expected


def test_a_run_longer_than_a_batch_is_split_by_capacity_around_the_oldest() -> None:
    policy = BatchPolicy(4, 8192, max_delay_ms=2.0, max_queue=1024)
    lengths = [5] * 10 + [3] * 3
    assert plan_positions(lengths, policy) == direct_plan(lengths, policy)
    assert plan_positions(lengths, policy) == ([0, 10, 11, 12], True)  # the 3s pad to 5 beside it
