"""Which sequences of a step attend together, for a backend that pads each group to its widest member.

A padded group gives every sequence the group's most query rows and most keys, so its attention
costs about (sequences x max query rows x max keys) key reads. Decoding sequences (one query each)
never share a group with wide ones (lookahead trees, prefill chunks): a 17-node tree beside 15
decodes would cost 16 x 17 query rows instead of 15 + 17. Within each kind, sequences sorted by
length are split where a split saves more key reads than a group's fixed cost (its own gathers,
masks and attention calls in every layer): 8 chats of 50 tokens beside 8 of 3,000 would otherwise
all read 3,000 keys.
"""
from __future__ import annotations

from collections.abc import Sequence

# a group's fixed cost in key reads (one query row x one key). Measured on 2 CPU cores, SmolLM2,
# 16 decodes: a key read costs ~6 us over the 30 layers in fp32 and ~8 us in bf16, an extra group
# 1.3 ms in fp32 and 2.7 ms in bf16 (~220 and ~330 key reads); rounded up, as a split has costs
# these miss (smaller products, a thread count chosen per group)
GROUP_COST_KEY_READS = 512
MAX_GROUPS = 6


def _padded_reads(q: Sequence[int], kv: Sequence[int]) -> int:
    return len(q) * max(q) * max(kv)


def _split(order: list[int], q: Sequence[int], kv: Sequence[int], groups_left: int,
           group_cost: int) -> list[list[int]]:
    """``order``: sequence indices sorted by key count. Splits in two where that saves the most,
    while the saving beats a group's cost, then recurses into both halves."""
    if groups_left < 2 or len(order) < 2:
        return [order]
    qs = [q[b] for b in order]
    kvs = [kv[b] for b in order]
    n = len(order)
    suffix_q = qs[:]  # max query rows of order[i:]
    for i in range(n - 2, -1, -1):
        suffix_q[i] = max(suffix_q[i], suffix_q[i + 1])
    whole = n * suffix_q[0] * kvs[-1]
    best, best_at, prefix_q = 0, 0, 0
    for i in range(1, n):  # left = order[:i], right = order[i:]; key counts ascend
        prefix_q = max(prefix_q, qs[i - 1])
        saving = whole - i * prefix_q * kvs[i - 1] - (n - i) * suffix_q[i] * kvs[-1] - group_cost
        if saving > best:
            best, best_at = saving, i
    if best_at == 0:
        return [order]
    left, right = order[:best_at], order[best_at:]
    # the larger remaining budget goes to the side with more padded reads
    left_share = groups_left // 2 if _padded_reads(qs[:best_at], kvs[:best_at]) <= \
        _padded_reads(qs[best_at:], kvs[best_at:]) else groups_left - groups_left // 2
    return _split(left, q, kv, left_share, group_cost) + _split(right, q, kv, groups_left - left_share, group_cost)


def attention_groups(query_lens: Sequence[int], kv_lens: Sequence[int], group_cost: int = GROUP_COST_KEY_READS,
                     max_groups: int = MAX_GROUPS) -> list[list[int]]:
    """Sequence indices per group, each ascending; every sequence in exactly one group.

    query_lens[b]: sequence b's query tokens this step; kv_lens[b]: the keys it reads (cached + new).
    """
    if len(query_lens) != len(kv_lens):
        raise ValueError(f"{len(query_lens)} query lengths for {len(kv_lens)} key lengths")
    decoding = [b for b, n in enumerate(query_lens) if n == 1]
    wide = [b for b, n in enumerate(query_lens) if n > 1]
    kinds = [k for k in (decoding, wide) if k]
    groups: list[list[int]] = []
    for kind in kinds:
        order = sorted(kind, key=lambda b: kv_lens[b])
        groups += _split(order, query_lens, kv_lens, max(1, max_groups // len(kinds)), group_cost)
    return [sorted(g) for g in groups]
