"""Least-recently-used order of the trie nodes of each tier, by one global recency stamp.

A node is stamped when a match, an allocate or a commit walks it. Walks stamp a path leaf-first,
so a parent is always more recent than its children and eviction meets leaves before the inner
nodes that lead to them. Demotion keeps a node's stamp: in the lower tier it is exactly as old as
it was, so a block just pushed out of the GPU does not jump ahead of colder CPU blocks.

Per tier: ``_nodes`` maps the live stamp of each node to the node, and ``_heap`` is a min-heap of
stamps with lazy deletion (a stamp no longer in ``_nodes`` is stale). Stamps are plain ints, so a
touch allocates nothing the garbage collector tracks; stale stamps are compacted away.
"""
from __future__ import annotations

import heapq
from itertools import count
from typing import Callable, Sequence

from kvstore.trie import TrieNode


class TierLRU:
    def __init__(self, num_tiers: int) -> None:
        self._heaps: list[list[int]] = [[] for _ in range(num_tiers)]
        self._nodes: list[dict[int, TrieNode]] = [{} for _ in range(num_tiers)]
        self._clock = count(1)

    def add(self, node: TrieNode) -> None:
        """``node`` entered tier ``node.tier``: created (stamped now) or demoted (keeps its stamp)."""
        if node.stamp == 0:
            node.stamp = next(self._clock)
        self._nodes[node.tier][node.stamp] = node
        self._push(node.tier, node.stamp)

    def remove(self, node: TrieNode) -> None:
        """``node`` leaves its tier (demoted or dropped)."""
        del self._nodes[node.tier][node.stamp]

    def touch_path(self, path: Sequence[TrieNode]) -> None:
        """Mark a root-to-leaf path used: deepest first, so parents end up more recent."""
        for node in reversed(path):
            nodes = self._nodes[node.tier]
            del nodes[node.stamp]
            node.stamp = next(self._clock)
            nodes[node.stamp] = node
            self._push(node.tier, node.stamp)

    def oldest(self, tier: int, eligible: Callable[[TrieNode], bool]) -> TrieNode | None:
        """The least recent ``eligible`` node of ``tier``, or None. Cost: the stale and ineligible
        stamps older than it (pinned nodes, parents of same-tier children), which are kept."""
        heap, nodes = self._heaps[tier], self._nodes[tier]
        skipped: list[int] = []
        found = None
        while heap:
            stamp = heapq.heappop(heap)
            node = nodes.get(stamp)
            if node is None:
                continue  # stale
            skipped.append(stamp)
            if eligible(node):
                found = node
                break
        for stamp in skipped:
            heapq.heappush(heap, stamp)
        return found

    def nodes(self, tier: int) -> list[TrieNode]:
        """Live nodes of ``tier``, least recent first (tests, stats)."""
        return [node for _, node in sorted(self._nodes[tier].items())]

    def num_live(self, tier: int) -> int:
        return len(self._nodes[tier])

    def check_integrity(self) -> None:
        for tier, nodes in enumerate(self._nodes):
            live = set(self._heaps[tier])
            for stamp, node in nodes.items():
                assert node.stamp == stamp and node.tier == tier, f"{node} filed under tier {tier} stamp {stamp}"
                assert stamp in live, f"{node} has no heap entry"

    def _push(self, tier: int, stamp: int) -> None:
        heap = self._heaps[tier]
        heapq.heappush(heap, stamp)
        if len(heap) > 2 * len(self._nodes[tier]) + 1024:  # compact stale stamps, amortized O(1)
            heap[:] = self._nodes[tier].keys()
            heapq.heapify(heap)
