"""Which sequences attend together (engine.attention.grouping): kinds apart, lengths split when it pays."""
from __future__ import annotations

import random

import pytest

from engine.attention.grouping import attention_groups


def _padded(groups: list[list[int]], q: list[int], kv: list[int]) -> int:
    return sum(len(g) * max(q[b] for b in g) * max(kv[b] for b in g) for g in groups)


def test_decodes_never_share_a_group_with_wide_sequences() -> None:
    q, kv = [1, 17, 1, 5, 1], [100, 120, 90, 40, 110]
    groups = attention_groups(q, kv, group_cost=10**9)  # no length split at all
    assert groups == [[0, 2, 4], [1, 3]]


def test_short_sequences_split_from_long_ones() -> None:
    q = [1] * 16
    kv = [50, 3000, 60, 2800, 40, 3500, 45, 1200, 55, 2500, 35, 2550, 70, 1300, 65, 1250]
    groups = attention_groups(q, kv, group_cost=512)
    assert [0, 2, 4, 6, 8, 10, 12, 14] in groups  # the eight short chats, alone
    assert _padded(groups, q, kv) + 512 * (len(groups) - 1) < 16 * 3500
    assert len(groups) <= 6


def test_equal_lengths_and_costly_splits_stay_whole() -> None:
    assert attention_groups([1] * 8, [300] * 8) == [list(range(8))]
    # splitting 2 short from 2 long saves 2 x 900 key reads: not worth a group that costs more
    assert attention_groups([1, 1, 1, 1], [100, 1000, 100, 1000], group_cost=2000) == [[0, 1, 2, 3]]
    assert attention_groups([1, 1, 1, 1], [100, 1000, 100, 1000], group_cost=1000) == [[0, 2], [1, 3]]


def test_wide_sequences_split_by_rows_and_keys() -> None:
    # a 33-row prefill chunk behind 2,000 keys beside small trees behind short contexts
    q, kv = [33, 9, 9, 9], [2033, 60, 70, 80]
    assert attention_groups(q, kv, group_cost=512) == [[1, 2, 3], [0]]


@pytest.mark.parametrize("seed", range(20))
def test_every_sequence_in_exactly_one_ascending_group(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randrange(1, 60)
    q = [rng.choice([1, 1, 1, 3, 9, 17, 64]) for _ in range(n)]
    kv = [qq + rng.randrange(0, 4000) for qq in q]
    cost = rng.choice([0, 512, 10**6])
    groups = attention_groups(q, kv, group_cost=cost, max_groups=4)
    assert sorted(b for g in groups for b in g) == list(range(n))
    assert all(g == sorted(g) and g for g in groups)
    assert all(len({q[b] == 1 for b in g}) == 1 for g in groups)  # one kind per group
    kinds = len({qq == 1 for qq in q})
    assert len(groups) <= max(4, kinds)
    assert _padded(groups, q, kv) <= _padded([[b for b in range(n) if q[b] == 1], [b for b in range(n) if q[b] > 1]]
                                             if kinds == 2 else [list(range(n))], q, kv)


def test_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="3 query lengths for 2 key lengths"):
        attention_groups([1, 1, 1], [5, 6])
