"""Process set-up shared by the workers."""
from __future__ import annotations

import gc

from engine.lookahead.ngram_trie import NGramTrie
from runtime.process import tune_gc


def test_tune_gc_freezes_the_loaded_objects_and_collects_young_ones_rarely() -> None:
    trie = NGramTrie()
    for i in range(1000):
        trie.insert((i,), [i + 1, i + 2])  # tracked objects that exist before the tuning
    old = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (50_000, 20, 20)
        assert gc.get_freeze_count() >= trie.num_nodes  # never walked by a collection again
        before = gc.get_count()[0]
        trie.insert((-1,), list(range(2000)))  # 2,000 new nodes: still young, no collection ran
        assert gc.get_count()[0] >= before + 2000
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)
