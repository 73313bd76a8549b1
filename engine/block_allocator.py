"""Reference-counted allocator of KV block ids. Knows nothing of tensors or tokens.

Invariants: a block is either free (refcount 0, in the free list) or owned (refcount > 0).
Blocks are shared by prefix caching and lookahead trees through ``share``.

The free list is kept in least-recently-freed order. A free block may still hold KV that the prefix
cache can hand out again (``revive``); ``allocate`` takes the oldest free blocks first and reports
each one it recycles through ``on_recycle`` so the cache forgets what that block held.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable

from engine.errors import OutOfBlocksError


class BlockAllocator:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._refcount = [0] * num_blocks
        self.on_recycle: Callable[[int], None] | None = None  # set by the prefix cache

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def refcount(self, block: int) -> int:
        return self._refcount[block]

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfBlocksError(f"need {n} KV blocks, {len(self._free)} free of {self.num_blocks}")
        out = [self._free.popitem(last=False)[0] for _ in range(n)]
        for b in out:
            self._refcount[b] = 1
            if self.on_recycle is not None:
                self.on_recycle(b)
        return out

    def share(self, blocks: Iterable[int]) -> None:
        for b in blocks:
            if self._refcount[b] <= 0:
                raise ValueError(f"cannot share free block {b}")
            self._refcount[b] += 1

    def revive(self, blocks: Iterable[int]) -> None:
        """Takes a reference on blocks that may be free but still hold wanted KV (prefix cache hits)."""
        for b in blocks:
            if self._refcount[b] == 0:
                del self._free[b]
            self._refcount[b] += 1

    def free(self, blocks: Iterable[int]) -> list[int]:
        """Drop one reference from each block; returns the blocks that became free.

        Blocks freed together are recycled in the order given: pass a sequence's tail first so its
        prefix, the part most likely to be shared again, stays cached longest.
        """
        released = []
        for b in blocks:
            rc = self._refcount[b]
            if rc <= 0:
                raise ValueError(f"double free of block {b}")
            self._refcount[b] = rc - 1
            if rc == 1:
                self._free[b] = None
                released.append(b)
        return released

    def check_integrity(self) -> None:
        free = set(self._free)
        for b, rc in enumerate(self._refcount):
            assert rc >= 0, f"block {b} has negative refcount"
            assert (rc == 0) == (b in free), f"block {b}: refcount {rc} but free={b in free}"
