"""KVStore: the manager joining the tiers (storage + allocation), the trie (index), the LRU order
and the leases. Single-threaded: the server calls it from its event loop only.

Ownership: every used block row has exactly one owner, a trie node or a write lease (pending
block), plus one reference per pin (a lease on a trie node, an in-flight fallback stream).
Eviction considers only unpinned nodes (refcount 1) and works tier by tier, least recent first:
  * a non-bottom tier demotes a node that has no child in its own tier (a leaf of that tier) into
    the next tier, evicting there first if needed; if the next tier can take nothing, it drops a
    childless node instead;
  * the bottom tier drops childless nodes (leaves of the whole trie) out of the store.
"""
from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator, Literal, Sequence

import torch

from engine.kv_layout import GROVE_VERSION, KVLayout
from engine.prefix_cache import hash_root
from kvstore.config import StoreConfig
from kvstore.errors import InvalidRequestError, LeaseNotFoundError, StoreFullError
from kvstore.leases import Lease, LeaseTable
from kvstore.lru import TierLRU
from kvstore.tier import Tier
from kvstore.trie import BlockTrie, TrieNode, split_blocks
from kvstore.types import (AllocateResult, BlockHandle, CommitResult, MatchResult, SnapshotStats, StoreStats, TierStats,
                           TransferReport)

logger = logging.getLogger(__name__)


class KVStore:
    def __init__(self, config: StoreConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.store_id = secrets.randbits(63) + 1  # this process's: clients see a restart by it
        self.geometry = config.geometry
        self.block_size = config.geometry.block_size
        self.block_bytes = config.geometry.block_bytes
        self.tiers = [Tier(t, config.geometry) for t in config.tiers]
        self._tier_index = {t.name: i for i, t in enumerate(self.tiers)}
        self._tier_names = [t.name for t in self.tiers]
        self.trie = BlockTrie(self.block_size)
        self.lru = TierLRU(len(self.tiers))
        self.leases = LeaseTable(clock)
        self.clock = clock
        self._stream_pins: Counter[BlockHandle] = Counter()
        self.match_queries = 0
        self.match_query_tokens = 0
        self.match_hit_tokens = 0
        self.expired_leases = 0
        self.version = 0  # counts the changes of what the trie caches (a block committed or dropped)
        self.snapshot_stats = SnapshotStats()
        # (plane, direction, "bytes" | "seconds"); every key exists from the start, so a metrics
        # scrape on another thread never sees the dict change size
        self.transfers: dict[tuple[str, str, str], float] = {
            (p, d, w): 0 for p in ("nixl", "grpc") for d in ("read", "write") for w in ("bytes", "seconds")}

    # ---- namespaces -------------------------------------------------------------------------
    def namespace(self, layout: KVLayout, compat_key: str, cache_salt: str = "") -> str:
        """The namespace of ``layout`` after checking that it fits the store and the caller's key:
        the layout's own, or with a ``cache_salt`` one of that salt's (named by the salt's digest)."""
        why = self.geometry.mismatch(layout)
        if why is not None:
            raise InvalidRequestError("ns.layout", why)
        key = layout.compat_key()
        if compat_key != key:
            raise InvalidRequestError(
                "ns.compat_key", f"{compat_key!r} is not this layout's key under Grove {GROVE_VERSION} "
                f"({key!r}): the client runs another Grove version or sent another layout")
        if cache_salt:
            key += "/salt/" + hash_root(cache_salt).hex()  # the salt's root in the workers' own caches
        return key

    # ---- read path --------------------------------------------------------------------------
    def match(self, namespace: str, tokens: Sequence[int], lease: bool = True) -> MatchResult:
        """Longest cached prefix of ``tokens`` (full blocks). With ``lease``, its blocks are pinned
        until ``release`` or expiry; without, only the length is returned (a peek)."""
        self.expire()
        self._check_tokens(tokens)
        path = self.trie.match(namespace, tokens)
        self.match_queries += 1
        self.match_query_tokens += len(tokens)
        self.match_hit_tokens += len(path) * self.block_size
        if not path:
            return MatchResult(0, (), 0)
        self.lru.touch_path(path)
        if not lease:
            return MatchResult(len(path) * self.block_size, (), 0)
        self._pin(path)
        held = self.leases.add(Lease("read", namespace, self.clock() + self.config.lease_ttl_s, path))
        names = self._tier_names
        handles = tuple([BlockHandle(names[n.tier], n.block) for n in path])
        return MatchResult(len(path) * self.block_size, handles, held.lease_id)

    def release(self, lease_id: int) -> None:
        """End a lease: unpin its nodes; a write lease's uncommitted blocks are freed."""
        self._end(self.leases.pop(lease_id))

    # ---- write path -------------------------------------------------------------------------
    def allocate(self, namespace: str, tokens: Sequence[int]) -> AllocateResult:
        """Reserve blocks for the uncached full blocks of ``tokens`` (top tier first, evicting)."""
        self.expire()
        self._check_tokens(tokens)
        keys = split_blocks(tokens, self.block_size)
        if not keys:
            raise InvalidRequestError("tokens", f"need at least one full block of {self.block_size} tokens, "
                                                f"got {len(tokens)}")
        path = self.trie.match(namespace, tokens)
        if path:
            self.lru.touch_path(path)
        if len(path) == len(keys):
            return AllocateResult(0, len(keys), ())
        self._pin(path)  # the prefix must outlive the write: commit attaches under it
        try:
            handles = self._allocate(len(keys) - len(path))
        except StoreFullError:
            self._unpin(path)
            raise
        lease = Lease("write", namespace, self.clock() + self.config.lease_ttl_s, path, handles, keys)
        return AllocateResult(self.leases.add(lease).lease_id, len(path), tuple(handles))

    def commit(self, lease_id: int) -> CommitResult:
        """Insert a write lease's filled blocks into the trie. Where a concurrent writer inserted the
        same block first, the first one stays and this lease's copy is freed."""
        self.expire()
        lease = self.leases.get(lease_id)
        if lease.kind != "write":
            raise InvalidRequestError("lease_id", f"lease {lease_id} is a read lease; Commit takes an Allocate's")
        self.leases.pop(lease_id)
        node = self.trie.root(lease.namespace)
        path: list[TrieNode] = []
        new = 0
        num_cached = len(lease.pinned)
        for i, key in enumerate(lease.keys):
            child = node.children.get(key)
            if i < num_cached:
                assert child is lease.pinned[i], "a pinned prefix node left the trie"
            else:
                handle = lease.pending[i - num_cached]
                tier = self._tier_index[handle.tier]
                if child is None:
                    child = self.trie.add_child(node, key, tier, handle.block)
                    self.lru.add(child)
                    new += 1
                else:
                    self.tiers[tier].allocator.free([handle.block])  # the other writer won this block
            path.append(child)
            node = child
        self.lru.touch_path(path)
        self._unpin(lease.pinned)
        self.version += new > 0
        return CommitResult(new, len(lease.keys) * self.block_size)

    # ---- fallback data plane ----------------------------------------------------------------
    @contextmanager
    def stream_blocks(self, lease_id: int, handles: Sequence[BlockHandle], write: bool) -> Iterator[list[torch.Tensor]]:
        """Byte views ([block_bytes] uint8) of blocks held by a lease, pinned while the caller
        streams them, so neither expiry nor commit can recycle a row mid-stream."""
        lease = self.leases.get(lease_id)
        if write != (lease.kind == "write"):
            raise InvalidRequestError("lease_id", f"lease {lease_id} is a {lease.kind} lease; "
                                                  f"{'Write needs an Allocate' if write else 'Read needs a Match'}'s")
        held = set(lease.pending) if write else {self.handle(n) for n in lease.pinned}
        for h in handles:
            if h not in held:
                raise LeaseNotFoundError(f"block {h} is not held by lease {lease_id}")
        for h in handles:
            self.tiers[self._tier_index[h.tier]].allocator.share([h.block])
            self._stream_pins[h] += 1
        try:
            yield [self.tiers[self._tier_index[h.tier]].block_bytes_view(h.block) for h in handles]
        finally:
            for h in handles:
                self.tiers[self._tier_index[h.tier]].allocator.free([h.block])
                self._stream_pins[h] -= 1
                if not self._stream_pins[h]:
                    del self._stream_pins[h]

    def record_transfer(self, report: TransferReport, direction: Literal["read", "write"]) -> None:
        self.transfers[(report.plane, direction, "bytes")] += report.bytes
        self.transfers[(report.plane, direction, "seconds")] += report.seconds

    # ---- housekeeping -----------------------------------------------------------------------
    def expire(self) -> int:
        """End leases past their expiry; returns how many."""
        expired = self.leases.pop_expired()
        for lease in expired:
            logger.warning("lease %d (%s, %d blocks) expired", lease.lease_id, lease.kind,
                           len(lease.pinned) + len(lease.pending))
            self._end(lease)
        self.expired_leases += len(expired)
        return len(expired)

    def clear(self) -> int:
        """Drops every cached block that no lease or stream pins (vLLM's reset of the prefix
        cache); a pinned block's ancestors stay with it. How many were dropped."""
        dropped = 0
        for node in reversed(list(self.trie.nodes())):  # children before their parents
            if not node.children and self.tiers[node.tier].allocator.refcount(node.block) == 1:
                self._drop(node, evicted=False)
                dropped += 1
        return dropped

    def handle(self, node: TrieNode) -> BlockHandle:
        return BlockHandle(self.tiers[node.tier].name, node.block)

    def block_view(self, handle: BlockHandle) -> torch.Tensor:
        """[num_layers, 2, block_size, num_kv_heads, head_dim] view of one block (tests, tools)."""
        return self.tiers[self._tier_index[handle.tier]].pool[handle.block]

    def stats(self) -> StoreStats:
        tiers = tuple(
            TierStats(t.name, str(t.device), t.capacity, t.allocator.num_used, self.lru.num_live(i), t.demoted,
                      t.dropped)
            for i, t in enumerate(self.tiers))
        return StoreStats(tiers, self.block_bytes, len(self.trie.roots), len(self.leases), self.match_queries,
                          self.match_query_tokens, self.match_hit_tokens)

    # ---- internals --------------------------------------------------------------------------
    def _check_tokens(self, tokens: Sequence[int]) -> None:
        if len(tokens) and min(tokens) < 0:
            raise InvalidRequestError("tokens", f"token ids must be non-negative, got {min(tokens)}")

    def _pin(self, nodes: Sequence[TrieNode]) -> None:
        for t, tier in enumerate(self.tiers):
            tier.allocator.share([n.block for n in nodes if n.tier == t])

    def _unpin(self, nodes: Sequence[TrieNode]) -> None:
        for t, tier in enumerate(self.tiers):
            released = tier.allocator.free([n.block for n in nodes if n.tier == t])
            assert not released, f"unpinning freed blocks {released} of tier {tier.name} that trie nodes still own"

    def _end(self, lease: Lease) -> None:
        self._unpin(lease.pinned)
        for h in lease.pending:
            self.tiers[self._tier_index[h.tier]].allocator.free([h.block])

    def _allocate(self, n: int) -> list[BlockHandle]:
        out: list[BlockHandle] = []
        for t, tier in enumerate(self.tiers):
            out += [BlockHandle(tier.name, b) for b in self._take(t, n - len(out))]
            if len(out) == n:
                return out
        for h in out:
            self.tiers[self._tier_index[h.tier]].allocator.free([h.block])
        used = ", ".join(f"{t.name} {t.allocator.num_used}/{t.capacity}" for t in self.tiers)
        raise StoreFullError(f"need {n} free blocks but only {len(out)} can be freed: every other block is "
                             f"leased or pending ({used} used, {len(self.leases)} leases)")

    def _take(self, t: int, n: int) -> list[int]:
        """Up to ``n`` free rows of tier ``t``, evicting from it as needed."""
        allocator = self.tiers[t].allocator
        while allocator.num_free < n and self._evict_one(t):
            pass
        return allocator.allocate(min(n, allocator.num_free))

    def _evict_one(self, t: int) -> bool:
        """Free one row of tier ``t`` by demoting or dropping its least recent evictable node."""
        allocator = self.tiers[t].allocator

        def unpinned_tier_leaf(node: TrieNode) -> bool:  # no child in this tier: demotable
            return allocator.refcount(node.block) == 1 and all(c.tier > t for c in node.children.values())

        def unpinned_leaf(node: TrieNode) -> bool:  # no child at all: droppable
            return allocator.refcount(node.block) == 1 and not node.children

        if t + 1 < len(self.tiers):
            node = self.lru.oldest(t, unpinned_tier_leaf)
            if node is None:
                return False
            lower = self._take(t + 1, 1)
            if lower:
                self._demote(node, lower[0])
                return True
            # the next tier cannot take anything: drop a leaf of this tier instead
        node = self.lru.oldest(t, unpinned_leaf)
        if node is None:
            return False
        self._drop(node)
        return True

    def _demote(self, node: TrieNode, lower_block: int) -> None:
        upper = self.tiers[node.tier]
        upper.copy_block_to(node.block, self.tiers[node.tier + 1], lower_block)
        self.lru.remove(node)
        upper.allocator.free([node.block])
        upper.demoted += 1
        node.tier, node.block = node.tier + 1, lower_block
        self.lru.add(node)

    def _drop(self, node: TrieNode, evicted: bool = True) -> None:
        tier = self.tiers[node.tier]
        self.lru.remove(node)
        self.trie.remove_leaf(node)
        tier.allocator.free([node.block])
        tier.dropped += evicted
        node.tier, node.block = -1, -1  # detached: owns nothing
        self.version += 1

    # ---- invariants -------------------------------------------------------------------------
    def check_integrity(self) -> None:
        """Every block is free or owned (by one trie node or one write lease); reference counts are
        owners + lease pins + stream pins; the trie, the LRU and the leases agree."""
        self.trie.check_integrity()
        self.lru.check_integrity()
        owners = [Counter[int]() for _ in self.tiers]
        refs = [Counter[int]() for _ in self.tiers]
        nodes = list(self.trie.nodes())
        for node in nodes:
            assert 0 <= node.tier < len(self.tiers) and node.block < self.tiers[node.tier].capacity, f"{node} dangles"
            owners[node.tier][node.block] += 1
            refs[node.tier][node.block] += 1
        for t in range(len(self.tiers)):
            in_tier = {n for n in nodes if n.tier == t}
            in_lru = self.lru.nodes(t)
            assert len(in_lru) == len(in_tier) == self.lru.num_live(t) and set(in_lru) == in_tier, \
                f"LRU of tier {t} disagrees with the trie"
        for lease in self.leases:
            for i, node in enumerate(lease.pinned):
                assert node.attached and node.namespace == lease.namespace, \
                    f"lease {lease.lease_id} pins a dropped node"
                refs[node.tier][node.block] += 1
                if lease.kind == "write":
                    assert node.key == lease.keys[i], f"write lease {lease.lease_id}: prefix out of order"
            if lease.kind == "read":
                assert not lease.pending and not lease.keys, f"read lease {lease.lease_id} owns blocks"
            else:
                assert len(lease.pinned) + len(lease.pending) == len(lease.keys), f"lease {lease.lease_id} size"
            for h in lease.pending:
                t = self._tier_index[h.tier]
                owners[t][h.block] += 1
                refs[t][h.block] += 1
        for h, count in self._stream_pins.items():
            refs[self._tier_index[h.tier]][h.block] += count
        for t, tier in enumerate(self.tiers):
            tier.allocator.check_integrity()
            for block, n in owners[t].items():
                assert n == 1, f"{tier.name}:{block} has {n} owners"
            for block in range(tier.capacity):
                rc = tier.allocator.refcount(block)
                assert rc == refs[t][block], f"{tier.name}:{block} refcount {rc}, owners + pins {refs[t][block]}"
