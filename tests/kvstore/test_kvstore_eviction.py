"""Eviction under capacity pressure: GPU -> CPU (-> disk) -> dropped, LRU over unpinned leaves.

No CUDA here: the upper tier is the store's "gpu" tier placed on CPU memory (a stand-in). The
demotion code path is the same as with a CUDA pool; only the device of the tensor differs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from kvstore.store import KVStore

NS = "ns"
MakeStore = Callable[..., KVStore]  # the conftest fixture: make_store(upper=0, cpu=8, ttl=30.0)


def seq(tag: int, blocks: int) -> list[int]:
    """``blocks`` full blocks of 4 tokens, distinct per tag from the first block on."""
    return [tag * 100 + i for i in range(4 * blocks)]


def insert(store: KVStore, tokens: Sequence[int]) -> None:
    alloc = store.allocate(NS, tokens)
    for i, h in enumerate(alloc.handles):
        block = alloc.num_cached_blocks + i
        store.block_view(h).copy_(fingerprint(tokens, block))
    if alloc.lease_id:
        store.commit(alloc.lease_id)


def fingerprint(tokens: Sequence[int], block: int) -> torch.Tensor:
    """The KV a writer puts in block ``block`` of ``tokens``: random, seeded by the block's prefix."""
    g = torch.Generator().manual_seed(hash(tuple(tokens[:4 * (block + 1)])) & 0xFFFFFFFF)
    return torch.randn((2, 2, 4, 1, 4), generator=g)  # conftest.GEOMETRY's block shape


def assert_cached_intact(store: KVStore, tokens: Sequence[int]) -> list[str]:
    """The whole of ``tokens`` is cached with the bytes written for it; returns the blocks' tiers."""
    hit = store.match(NS, tokens)
    assert hit.num_tokens == len(tokens), f"only {hit.num_tokens} of {len(tokens)} tokens cached"
    for i, h in enumerate(hit.handles):
        assert store.block_view(h).equal(fingerprint(tokens, i)), f"block {i} ({h}) corrupted"
    store.release(hit.lease_id)
    return [h.tier for h in hit.handles]


def test_pressure_demotes_gpu_blocks_to_cpu_with_their_bytes(make_store: MakeStore) -> None:
    store = make_store(upper=4, cpu=8)
    insert(store, seq(1, 2))
    insert(store, seq(2, 2))
    assert store.stats().tiers[0].cached_blocks == 4  # the upper tier is full
    insert(store, seq(3, 2))  # needs 2 upper blocks: the least recent sequence moves down
    gpu, cpu = store.stats().tiers
    assert (gpu.demoted_blocks, cpu.cached_blocks, gpu.cached_blocks) == (2, 2, 4)
    assert assert_cached_intact(store, seq(1, 2)) == ["cpu", "cpu"]
    assert assert_cached_intact(store, seq(3, 2)) == ["gpu", "gpu"]
    store.check_integrity()


def test_demotion_takes_leaves_first(make_store: MakeStore) -> None:
    store = make_store(upper=3, cpu=8)
    insert(store, seq(1, 3))
    insert(store, seq(2, 1))  # one block must go: the leaf of seq 1, not its root
    assert store.match(NS, seq(1, 3), lease=False).num_tokens == 12
    hit = store.match(NS, seq(1, 3))
    assert [h.tier for h in hit.handles] == ["gpu", "gpu", "cpu"]
    store.release(hit.lease_id)


def test_cpu_pressure_drops_and_keeps_leased_blocks(make_store: MakeStore) -> None:
    store = make_store(upper=2, cpu=2)
    insert(store, seq(1, 2))
    leased = store.match(NS, seq(1, 2))  # pinned: must survive everything below
    for tag in range(2, 8):
        insert(store, seq(tag, 1))
    gpu, cpu = store.stats().tiers
    assert cpu.dropped_blocks > 0
    assert store.match(NS, seq(1, 2), lease=False).num_tokens == 8
    for i, h in enumerate(leased.handles):  # same rows, same bytes
        assert store.block_view(h).equal(fingerprint(seq(1, 2), i))
    assert store.match(NS, seq(7, 1), lease=False).num_tokens == 4  # the newest is cached
    assert store.match(NS, seq(2, 1), lease=False).num_tokens == 0  # an old cold one is gone
    store.release(leased.lease_id)
    store.check_integrity()


def test_full_lower_tier_drops_upper_leaves_directly(make_store: MakeStore) -> None:
    store = make_store(upper=2, cpu=2)
    insert(store, seq(1, 2))
    insert(store, seq(2, 2))  # seq 1 demoted to cpu
    pinned = store.match(NS, seq(1, 2))  # cpu full of leased blocks: nothing can move down
    insert(store, seq(3, 1))  # the upper tier must drop its LRU leaf instead
    gpu, _ = store.stats().tiers
    assert gpu.dropped_blocks == 1
    assert store.match(NS, seq(2, 2), lease=False).num_tokens == 4
    store.release(pinned.lease_id)


def test_hot_prefix_survives_many_cold_ones(make_store: MakeStore) -> None:
    store = make_store(upper=4, cpu=6)
    hot, twin = seq(0, 3), seq(99, 3)
    insert(store, twin)  # about as old as the hot prefix, but never asked for again
    insert(store, hot)
    for tag in range(1, 60):
        insert(store, seq(tag, 2))  # 118 cold blocks through a 10-block store
        if tag % 3 == 0:  # the hot prefix keeps being asked for
            assert store.match(NS, hot, lease=False).num_tokens == 12
    assert_cached_intact(store, hot)  # (in the cpu tier by now: hits do not promote)
    assert store.match(NS, twin, lease=False).num_tokens == 0
    assert store.stats().tiers[1].dropped_blocks > 90
    store.check_integrity()


def test_three_tiers_demote_gpu_to_cpu_to_disk_with_their_bytes(tmp_path: Path) -> None:
    """A disk tier below the CPU tier (a memory-mapped file): blocks the CPU tier cannot keep move
    there with their bytes and are read from there; only the disk tier drops."""
    from kvstore.config import StoreConfig, TierConfig
    from tests.kvstore.conftest import GEOMETRY

    disk = tmp_path / "kv.disk"
    store = KVStore(StoreConfig(GEOMETRY, (TierConfig("gpu", "cpu", 2), TierConfig("cpu", "cpu", 2),
                                           TierConfig("disk", "cpu", 4, path=str(disk)))))
    assert disk.stat().st_size == 4 * GEOMETRY.block_bytes
    for tag in range(1, 4):  # 6 blocks through 2 + 2 + 4 rows
        insert(store, seq(tag, 2))
    gpu, cpu, on_disk = store.stats().tiers
    assert (gpu.cached_blocks, cpu.cached_blocks, on_disk.cached_blocks) == (2, 2, 2)
    assert gpu.demoted_blocks == 4 and cpu.demoted_blocks == 2 and on_disk.dropped_blocks == 0
    assert assert_cached_intact(store, seq(1, 2)) == ["disk", "disk"]  # the least recent, read from the file
    for tag in range(4, 7):  # 6 more: the disk tier fills, then drops its least recent leaves
        insert(store, seq(tag, 2))
    assert store.stats().tiers[2].dropped_blocks > 0
    store.check_integrity()
