"""The engine's local prefix cache: full KV blocks found again by the tokens they hold.

A full block is named by a chained hash: ``h_i = blake2b(h_{i-1} || tokens of block i)``, so equal
hashes mean equal token prefixes (128-bit digests; a collision is not a practical concern), and a
block's hash never depends on where its KV lives. The chain starts from ``hash_root(cache_salt)``:
requests with a salt (vLLM's ``cache_salt``) share blocks only with requests of the same salt. The cache maps hashes to block ids and takes no
reference of its own: a cached block stays in the allocator's free list, in least-recently-freed
order, and keeps its KV until ``allocate`` recycles it, which tells the cache to forget it. A hit
``revive``s the blocks, so they are shared by every sequence that matched them.

Invariant: only blocks whose every slot is written (positions below the owner's ``num_cached``)
are registered, and nothing writes to a registered block again, so sharing needs no copy-on-write.
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from typing import Sequence

from engine.block_allocator import BlockAllocator
from engine.errors import InvalidRequestError

_ROOT = b"grove-prefix-v1"


def cache_namespace(cache_salt: str, adapter_digest: str = "") -> str:
    """The salt a request's chain and caches go by: its client's ``cache_salt``, and its LoRA
    adapter where it has one (KV computed with an adapter is that adapter's alone). Client salts
    never hold NUL (``check_salt``), so no client salt names an adapter's namespace."""
    return f"\0lora:{adapter_digest}\0{cache_salt}" if adapter_digest else cache_salt


def check_salt(cache_salt: str) -> None:
    if "\0" in cache_salt:
        raise InvalidRequestError("cache_salt", "may not hold NUL characters")


def hash_root(cache_salt: str = "") -> bytes:
    """Where a request's chain starts: one shared root, or its salt's own (no prefix of a salted
    request is found by a request without that salt, so cache hits tell nothing across tenants)."""
    if not cache_salt:
        return _ROOT
    return hashlib.blake2b(_ROOT + b"/salt/" + cache_salt.encode(), digest_size=16).digest()


def block_hashes(tokens: Sequence[int], block_size: int, start: list[bytes] | None = None,
                 limit: int | None = None, cache_salt: str = "") -> list[bytes]:
    """Chained hashes of the full blocks of ``tokens``, extending ``start`` (hashes already known,
    under the same salt)."""
    out = list(start or [])
    n_full = len(tokens) // block_size if limit is None else min(limit, len(tokens) // block_size)
    prev = out[-1] if out else hash_root(cache_salt)
    for i in range(len(out), n_full):
        chunk = array("q", tokens[i * block_size : (i + 1) * block_size]).tobytes()
        prev = hashlib.blake2b(prev + chunk, digest_size=16).digest()
        out.append(prev)
    return out


@dataclass(slots=True)
class PrefixCacheStats:
    query_tokens: int = 0  # prompt tokens looked up
    hit_tokens: int = 0  # of those, found cached


class PrefixCache:
    def __init__(self, allocator: BlockAllocator, block_size: int) -> None:
        self.allocator = allocator
        self.block_size = block_size
        self._block_of: dict[bytes, int] = {}
        self._hash_of: dict[int, bytes] = {}
        self.stats = PrefixCacheStats()
        allocator.on_recycle = self._forget

    def __len__(self) -> int:
        return len(self._block_of)

    def _forget(self, block: int) -> None:
        h = self._hash_of.pop(block, None)
        if h is not None:
            del self._block_of[h]

    def match(self, hashes: Sequence[bytes], num_query_tokens: int) -> list[int]:
        """Longest run of cached blocks for ``hashes`` (a prefix's block hashes, in order).

        The returned blocks carry one new reference each, owned by the caller.
        ``num_query_tokens`` is what the caller asked for, counted in the hit-rate stats with the
        hit (0: a repeated lookup for the same request, not counted).
        """
        blocks = [self._block_of[h] for h in hashes[: self.num_cached(hashes)]]
        self.allocator.revive(blocks)
        if num_query_tokens:
            self.stats.query_tokens += num_query_tokens
            self.stats.hit_tokens += len(blocks) * self.block_size
        return blocks

    def num_cached(self, hashes: Sequence[bytes]) -> int:
        """How many leading blocks of ``hashes`` ``match`` would return now (no reference, no stats)."""
        n = 0
        for h in hashes:
            if h not in self._block_of:
                break
            n += 1
        return n

    def insert(self, hashes: Sequence[bytes], blocks: Sequence[int]) -> None:
        """Registers ``blocks[i]`` (full, written, owned by the caller) as holding ``hashes[i]``.

        A hash already cached elsewhere keeps its block (the duplicate is recycled normally), and a
        block already registered keeps its hash.
        """
        for h, b in zip(hashes, blocks):
            if h in self._block_of or b in self._hash_of:
                continue
            self._block_of[h] = b
            self._hash_of[b] = h

    def clear(self) -> int:
        """Forgets every cached prefix (vLLM's reset): blocks in use stay with their sequences, free
        ones are plain free blocks; how many blocks were cached."""
        n = len(self._block_of)
        self._block_of.clear()
        self._hash_of.clear()
        return n

    def check_integrity(self) -> None:
        assert len(self._block_of) == len(self._hash_of)
        for h, b in self._block_of.items():
            assert self._hash_of[b] == h, f"block {b} is cached under two names"
