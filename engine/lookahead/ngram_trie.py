"""An n-gram continuation cache: context key (the last k tokens) -> a trie of what followed it.

    insert(key, window): counts each prefix of ``window`` as a continuation of ``key``
    root(key), child(node, tok): the nodes themselves, for callers that keep cursors into the trie
        (streaming text: engine.lookahead.drafter extends each open window by one node per token)
    branches(key, budget, depth): the most frequent continuations, best first, as root-to-leaf paths

Memory is bounded: when the node count passes ``max_nodes`` every count is halved and nodes whose
count falls below 1 are pruned (older text decays, frequent text stays). Each decay bumps ``epoch``:
a node held across one may have been pruned.
"""
from __future__ import annotations

import heapq
from typing import Sequence

Key = tuple[int, ...]


class TrieNode:
    __slots__ = ("count", "children")

    def __init__(self) -> None:
        self.count = 0.0
        self.children: dict[int, TrieNode] = {}


class NGramTrie:
    def __init__(self, max_nodes: int = 1 << 20) -> None:
        self.max_nodes = max_nodes
        self.roots: dict[Key, TrieNode] = {}
        self.num_nodes = 0
        self.epoch = 0  # decays so far

    def root(self, key: Key) -> TrieNode:
        node = self.roots.get(key)
        if node is None:
            node = self.roots[key] = TrieNode()
            self.num_nodes += 1
        return node

    def child(self, node: TrieNode, tok: int) -> TrieNode:
        child = node.children.get(tok)
        if child is None:
            child = node.children[tok] = TrieNode()
            self.num_nodes += 1
        return child

    def insert(self, key: Key, window: Sequence[int], weight: float = 1.0) -> None:
        node = self.root(key)
        node.count += weight
        for tok in window:
            node = self.child(node, tok)
            node.count += weight
        self.bound()

    def bound(self) -> None:
        """Decays once the trie holds more than ``max_nodes`` nodes."""
        if self.num_nodes > self.max_nodes:
            self.decay()

    def decay(self) -> None:
        """Halve every count; drop nodes under 1."""
        self.epoch += 1
        def prune(node: TrieNode) -> int:
            kept = 1
            for tok in list(node.children):
                child = node.children[tok]
                child.count /= 2
                if child.count < 1:
                    del node.children[tok]
                else:
                    kept += prune(child)
            return kept

        total = 0
        for key in list(self.roots):
            root = self.roots[key]
            root.count /= 2
            if root.count < 1:
                del self.roots[key]
            else:
                total += prune(root)
        self.num_nodes = total

    def branches(self, key: Key, budget: int, max_depth: int) -> list[list[int]]:
        """Up to ``budget`` tokens of continuations, expanded best-first by count, as paths."""
        root = self.roots.get(key)
        if root is None or budget <= 0:
            return []
        # best-first expansion: a node enters the tree only after its parent did
        heap: list[tuple[float, int, list[int], TrieNode]] = []
        tie = 0
        for tok, child in root.children.items():
            heap.append((-child.count, tie, [tok], child))
            tie += 1
        heapq.heapify(heap)
        chosen: list[list[int]] = []
        while heap and len(chosen) < budget:
            _, _, path, node = heapq.heappop(heap)
            chosen.append(path)
            if len(path) < max_depth:
                for tok, child in node.children.items():
                    tie += 1
                    heapq.heappush(heap, (-child.count, tie, path + [tok], child))
        # keep only maximal paths (a chosen path that is a prefix of another adds nothing)
        prefixes = {tuple(p[:-1]) for p in chosen}
        return [p for p in chosen if tuple(p) not in prefixes]
