from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.batching.planner import BatchPolicy, batch_cost, capacity, plan_batch


def policy(**overrides: object) -> BatchPolicy:
    fields: dict[str, object] = {"max_batch_size": 32, "max_batch_tokens": 8192, "max_delay_ms": 2.0, "max_queue": 1024}
    fields.update(overrides)
    return BatchPolicy(**fields)  # type: ignore[arg-type]


def test_equal_lengths_fill_the_batch() -> None:
    plan = plan_batch(np.full(40, 50), policy())
    assert plan.indices.tolist() == list(range(32))
    assert plan.full


def test_a_lone_sequence_is_a_batch() -> None:
    plan = plan_batch(np.array([7]), policy())
    assert plan.indices.tolist() == [0]
    assert not plan.full


def test_short_and_long_sequences_are_not_padded_together() -> None:
    short_first = np.array([10] * 16 + [200] * 16)
    assert set(plan_batch(short_first, policy()).indices.tolist()) == set(range(16))
    long_first = np.array([200] * 16 + [10] * 16)
    assert set(plan_batch(long_first, policy()).indices.tolist()) == set(range(16))


def test_similar_lengths_share_a_batch() -> None:
    lengths = np.array([20, 19, 21, 18, 22])
    assert plan_batch(lengths, policy()).indices.tolist() == [0, 1, 2, 3, 4]


def test_token_budget_counts_padded_cells() -> None:
    lengths = np.array([100, 100, 100, 100])
    plan = plan_batch(lengths, policy(max_batch_tokens=250))
    assert plan.indices.tolist() == [0, 1]
    assert plan.full
    assert capacity(policy(max_batch_tokens=250), 100) == 2


def test_a_sequence_longer_than_the_budget_runs_alone() -> None:
    plan = plan_batch(np.array([500, 500]), policy(max_batch_tokens=100))
    assert plan.indices.tolist() == [0]


def test_equal_length_policy_batches_only_the_oldest_length_in_arrival_order() -> None:
    lengths = np.array([5, 3, 5, 5, 3, 5])
    plan = plan_batch(lengths, policy(equal_length=True, max_batch_size=3))
    assert plan.indices.tolist() == [0, 2, 3]
    assert plan.full


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=120),
    max_batch_size=st.integers(1, 64),
    max_batch_tokens=st.integers(1, 5000),
    equal_length=st.booleans(),
)
def test_plans_hold_their_invariants(
    lengths: list[int], max_batch_size: int, max_batch_tokens: int, equal_length: bool
) -> None:
    array = np.array(lengths)
    p = policy(max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens, equal_length=equal_length)
    chosen = plan_batch(array, p).indices.tolist()
    assert chosen and chosen[0] == 0, "the oldest sequence is always in the next batch"
    assert chosen == sorted(set(chosen))
    assert len(chosen) <= max_batch_size
    longest = max(array[chosen])
    assert len(chosen) == 1 or len(chosen) * longest <= max_batch_tokens
    if equal_length:
        assert set(array[chosen].tolist()) == {lengths[0]}


def least_cost(sorted_lengths: list[int], p: BatchPolicy) -> float:
    """The least total `batch_cost` of serving `sorted_lengths` in contiguous groups, by brute force."""
    best = [0.0] * (len(sorted_lengths) + 1)
    for j in range(len(sorted_lengths) - 1, -1, -1):
        best[j] = min(
            best[i] + batch_cost(i - j, sorted_lengths[i - 1])
            for i in range(j + 1, len(sorted_lengths) + 1)
            if i - j <= capacity(p, sorted_lengths[i - 1])
        )
    return best[0]


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=12),
    max_batch_tokens=st.integers(1, 2000),
)
def test_the_next_batch_is_a_group_of_a_least_cost_split(lengths: list[int], max_batch_tokens: int) -> None:
    p = policy(max_batch_size=16, max_batch_tokens=max_batch_tokens)  # every pending sequence in view
    order = np.argsort(np.array(lengths), kind="stable").tolist()
    ranks = sorted(order.index(i) for i in plan_batch(np.array(lengths), p).indices.tolist())
    start, stop = ranks[0], ranks[-1] + 1
    assert ranks == list(range(start, stop)), "a contiguous run of lengths"
    ordered = sorted(lengths)
    around = least_cost(ordered[:start], p) + least_cost(ordered[stop:], p)
    assert least_cost(ordered, p) == around + batch_cost(stop - start, ordered[stop - 1])
