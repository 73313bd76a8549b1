"""A corpus lookahead drafts from beside each request's own text and every request's outputs: the
text a deployment expects its answers to repeat (its documentation, a code base, the answers it
gave before), given at start (``--lookahead-corpus``). Alipay's lookahead calls it a pre-built
trie (4.4-5.4x on a private RAG workload, ../shared/research/peers.md); SGLang's n-gram drafter
has none. A decode worker starts warm with it: its first request drafts from it.

The index is built once, with numpy, and read-only after: for each key length k, the hash of
every k tokens before a position, sorted (positions in order within a hash). A lookup hashes the
key, finds its positions by binary search, checks their tokens (a hash may collide), and counts
what followed up to ``limit`` of them, spread over the corpus, in a small trie (as a request's own
text is counted: engine.lookahead.position_index). About 28 bytes a corpus token for two key
lengths; documents never run into one another.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from engine.lookahead.ngram_trie import Key, NGramTrie

logger = logging.getLogger(__name__)

_MUL = 0x9E3779B97F4A7C15  # an odd 64-bit multiplier: hash = fold(hash * _MUL + token + 1) mod 2**64
_MASK = (1 << 64) - 1
_SEPARATOR = -1  # between documents: no key holds it, no continuation crosses it
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".js", ".ts", ".java", ".c", ".cc", ".cpp", ".h", ".go", ".rs",
                 ".json", ".yaml", ".yml", ".toml", ".html", ".css", ".sh", ".sql")


def _key_hash(key: Sequence[int]) -> int:
    h = 0
    for t in key:
        h = (h * _MUL + t + 1) & _MASK
    return h


class CorpusIndex:
    def __init__(self, documents: Iterable[Sequence[int]], key_lengths: Sequence[int] = (3, 2)) -> None:
        parts: list[np.ndarray] = []
        for doc in documents:
            parts += [np.asarray(doc, dtype=np.int64), np.array([_SEPARATOR], dtype=np.int64)]
        self.tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # [n]: documents, separated
        self.num_documents = len(parts) // 2
        n = len(self.tokens)
        sep = self.tokens == _SEPARATOR
        index_dtype = np.int32 if n < 2**31 else np.int64
        # per key length k: (hashes [m] sorted, positions [m]) of every position i >= k whose key
        # tokens[i - k : i] and first continuation token tokens[i] hold no separator
        self.tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        with np.errstate(over="ignore"):
            for k in key_lengths:
                if n <= k:
                    continue
                h = np.zeros(n - k, dtype=np.uint64)
                bad = sep[k:].copy()
                for j in range(k):
                    h = h * np.uint64(_MUL) + (self.tokens[j:n - k + j] + 1).astype(np.uint64)
                    bad |= sep[j:n - k + j]
                keep = ~bad
                h, pos = h[keep], np.arange(k, n, dtype=index_dtype)[keep]
                order = np.argsort(h, kind="stable")
                self.tables[k] = (h[order], pos[order])

    def __len__(self) -> int:
        """Corpus tokens (separators included)."""
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return self.tokens.nbytes + sum(h.nbytes + p.nbytes for h, p in self.tables.values())

    def _positions(self, key: Key) -> np.ndarray:
        """Where ``key``'s hash occurs (a continuation starts at each), in corpus order."""
        table = self.tables.get(len(key))
        if table is None:
            return np.zeros(0, dtype=np.int64)
        hashes, positions = table
        h = np.uint64(_key_hash(key))
        return positions[np.searchsorted(hashes, h, "left"):np.searchsorted(hashes, h, "right")]

    def has(self, key: Key) -> bool:
        """Whether the corpus continues ``key`` (a collision of hashes alone does not count)."""
        at = self._positions(key)
        k = len(key)
        return any(self.tokens[i - k:i].tolist() == list(key) for i in at[:4].tolist())

    def branches(self, key: Key, budget: int, max_depth: int, limit: int) -> list[list[int]]:
        """Up to ``budget`` tokens of continuations of ``key``, best first: what followed up to
        ``limit`` of its occurrences (spread evenly over the corpus), each cut at its document's end."""
        at = self._positions(key)
        if not len(at) or budget <= 0:
            return []
        if len(at) > limit:
            at = at[np.linspace(0, len(at) - 1, limit).astype(np.int64)]
        counts, k, want = NGramTrie(), len(key), list(key)
        for i in at.tolist():
            if self.tokens[i - k:i].tolist() != want:
                continue  # another key of the same hash
            path = self.tokens[i:i + max_depth].tolist()
            if _SEPARATOR in path:
                path = path[:path.index(_SEPARATOR)]
            counts.insert(key, path)
        return counts.branches(key, budget, max_depth) if counts.roots else []


def corpus_texts(paths: Sequence[str]) -> Iterator[str]:
    """The documents of ``--lookahead-corpus``: a ``.jsonl`` file's lines (each a string or an
    object with ``"text"``), any other file whole, a folder's text files (by suffix) each whole."""
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"--lookahead-corpus: {p} does not exist")
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (*TEXT_SUFFIXES, ".jsonl")) \
            if p.is_dir() else [p]
        for f in files:
            if f.suffix != ".jsonl":
                yield f.read_text(encoding="utf-8", errors="replace")
                continue
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                value = json.loads(line)
                text = value.get("text") if isinstance(value, dict) else value
                if not isinstance(text, str):
                    raise ValueError(f"--lookahead-corpus: {f} line {n} is neither a string nor has a \"text\" string")
                yield text


def load_corpus(paths: Sequence[str], encode: Callable[[str], list[int]],
                key_lengths: Sequence[int] = (3, 2)) -> CorpusIndex | None:
    """The index of the corpus at ``paths`` (None for none), each document tokenized by ``encode``."""
    if not paths:
        return None
    index = CorpusIndex((encode(t) for t in corpus_texts(paths)), key_lengths)
    logger.info("lookahead corpus: %d documents, %d tokens, index %.1f MiB", index.num_documents,
                len(index) - index.num_documents, index.nbytes / 2**20)
    return index
