"""A request's own cache: where each short n-gram of its text (prompt + output) occurred.

    feed(tokens, end): records tokens[fed:end]; each token costs one list append per key length
    branches(key, budget, depth, limit): the most frequent continuations of ``key``, best first

A window trie over a 2,000-token prompt makes up to 48,000 nodes (8-token windows under 3 key
lengths) and took 61 ms of the engine thread at admission (random tokens), a stall of the whole
batch. Positions take 3.4 ms; the continuations of a key are counted when it is looked up, over its ``limit`` latest
occurrences, into a trie that counts exactly what the window trie held for that key (each path:
how often key + path occurs). Lookups happen only for requests the budget lets draft.
"""
from __future__ import annotations

from typing import Sequence

from engine.lookahead.ngram_trie import Key, NGramTrie


class PositionIndex:
    def __init__(self, key_lengths: Sequence[int]) -> None:
        self.key_lengths = tuple(key_lengths)
        self.tokens: list[int] = []  # the text so far (a copy: continuations are read from it)
        self.starts: dict[Key, list[int]] = {}  # key -> positions i with tokens[i - k : i] == key

    @property
    def fed(self) -> int:
        """Tokens recorded: position i is recorded once tokens[i] exists."""
        return len(self.tokens)

    def feed(self, tokens: Sequence[int], end: int) -> None:
        """Records tokens[fed:end] and the positions whose continuation starts there."""
        starts, start = self.starts, self.fed
        self.tokens.extend(tokens[start:end])
        tokens = self.tokens
        for i in range(start, end):
            for k in self.key_lengths:
                if i >= k:
                    key = tuple(tokens[i - k : i])
                    at = starts.get(key)
                    if at is None:
                        starts[key] = [i]
                    else:
                        at.append(i)

    def continuations(self, key: Key, max_depth: int, limit: int) -> NGramTrie:
        """What followed ``key``'s latest ``limit`` occurrences (each at most ``max_depth`` tokens,
        cut at the end of the text), counted in a trie under ``key``."""
        counts, tokens = NGramTrie(), self.tokens
        for i in self.starts.get(key, [])[-limit:]:
            counts.insert(key, tokens[i : i + max_depth])
        return counts

    def branches(self, key: Key, budget: int, max_depth: int, limit: int) -> list[list[int]]:
        """Up to ``budget`` tokens of continuations of ``key``, best first, as paths."""
        if key not in self.starts or budget <= 0:
            return []
        return self.continuations(key, max_depth, limit).branches(key, budget, max_depth)
