"""Draft retrieval: each request's own trie (prompt + output) and one global trie (all outputs).

Both update incrementally: a request's prompt is indexed once; every new output token extends the
windows that end at it by one node each (no re-scan of the history).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.lookahead.ngram_trie import NGramTrie
from engine.lookahead.tree import DraftTree


@dataclass(frozen=True, slots=True)
class DrafterConfig:
    key_lengths: tuple[int, ...] = (3, 2, 1)  # context tokens used as the lookup key, longest first
    window: int = 8  # continuation length stored per position (the deepest draft)
    global_max_nodes: int = 1 << 20
    local_max_nodes: int = 1 << 18


@dataclass(slots=True)
class RequestCache:
    trie: NGramTrie
    fed: int = 0  # tokens of the sequence already indexed (windows completed up to here)


class Drafter:
    def __init__(self, config: DrafterConfig = DrafterConfig()) -> None:
        self.config = config
        self.global_trie = NGramTrie(config.global_max_nodes)
        self.local: dict[str, RequestCache] = {}

    def _feed(self, trie: NGramTrie, tokens: Sequence[int], start: int, end: int) -> None:
        """Indexes tokens[start:end] as they arrive: each new token extends every window (of up to
        ``window`` tokens) that ends at it, under each key = the k tokens before the window."""
        w = self.config.window
        for last in range(start, end):
            for first in range(max(1, last - w + 1), last + 1):  # window tokens[first .. last]
                path = tokens[first : last + 1]
                for k in self.config.key_lengths:
                    if first - k >= 0:
                        trie.extend(tuple(tokens[first - k : first]), path)

    def observe(self, request_id: str, tokens: Sequence[int], num_prompt: int) -> None:
        """Indexes what is new in the request's tokens (prompt + output so far)."""
        cache = self.local.get(request_id)
        if cache is None:
            cache = self.local[request_id] = RequestCache(NGramTrie(self.config.local_max_nodes))
        if cache.fed < len(tokens):
            self._feed(cache.trie, tokens, cache.fed, len(tokens))
            # outputs (not prompts) also feed the global cache: they are what requests tend to repeat
            self._feed(self.global_trie, tokens, max(cache.fed, num_prompt), len(tokens))
            cache.fed = len(tokens)

    def forget(self, request_id: str) -> None:
        self.local.pop(request_id, None)

    def propose(self, request_id: str, tokens: Sequence[int], budget: int, max_depth: int) -> DraftTree:
        """A tree of up to ``budget`` draft tokens continuing ``tokens``: own trie first, then global."""
        tree = DraftTree()
        if budget <= 0:
            return tree
        cache = self.local.get(request_id)
        for trie in ([cache.trie] if cache else []) + [self.global_trie]:
            for k in self.config.key_lengths:
                if len(tokens) < k:
                    continue
                for path in trie.branches(tuple(tokens[-k:]), budget, max_depth):
                    tree.add_branch(path, budget)
                if len(tree) >= budget:
                    return tree
                if len(tree):
                    break  # a longer key matched in this trie: shorter keys are noisier
        return tree
