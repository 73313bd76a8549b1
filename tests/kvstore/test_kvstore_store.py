"""KVStore scenarios in process: match/insert, sharing, namespaces, leases, two writers, refusals."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import pytest

from engine.kv_layout import KVLayout
from kvstore.errors import InvalidRequestError, LeaseNotFoundError, StoreFullError
from kvstore.store import KVStore
from kvstore.types import BlockHandle

NS = "ns-a"
MakeStore = Callable[..., KVStore]  # the conftest fixture: make_store(upper=0, cpu=8, ttl=30.0)


def insert(store: KVStore, tokens: Sequence[int], value: float = 1.0, ns: str = NS) -> int:
    """Allocate, fill every new block with ``value`` + its block index, commit; returns new blocks."""
    alloc = store.allocate(ns, tokens)
    for i, h in enumerate(alloc.handles):
        store.block_view(h).fill_(value + alloc.num_cached_blocks + i)
    return store.commit(alloc.lease_id).num_new_blocks if alloc.lease_id else 0


def test_match_returns_longest_full_block_prefix(make_store: MakeStore) -> None:
    store = make_store(cpu=8)
    assert store.match(NS, list(range(12))) == (0, (), 0)
    assert insert(store, list(range(10))) == 2  # 10 tokens = 2 full blocks of 4; the tail is not cached
    hit = store.match(NS, list(range(12)))
    assert hit.num_tokens == 8 and len(hit.handles) == 2 and hit.lease_id
    assert [store.block_view(h).unique().tolist() for h in hit.handles] == [[1.0], [2.0]]
    assert store.match(NS, [0, 1, 2, 3, 9, 9, 9, 9], lease=False).num_tokens == 4
    assert store.match(NS, [0, 1, 2], lease=False).num_tokens == 0
    store.release(hit.lease_id)
    store.check_integrity()


def test_insert_shares_the_cached_prefix(make_store: MakeStore) -> None:
    store = make_store(cpu=8)
    insert(store, [1, 1, 1, 1, 2, 2, 2, 2])
    alloc = store.allocate(NS, [1, 1, 1, 1, 3, 3, 3, 3, 4, 4, 4, 4])
    assert alloc.num_cached_blocks == 1 and len(alloc.handles) == 2
    store.check_integrity()  # the shared prefix is pinned by the write lease
    assert store.commit(alloc.lease_id).num_new_blocks == 2
    assert store.stats().tiers[0].cached_blocks == 5 - 1  # 1 shared + 1 + 2
    assert store.allocate(NS, [1, 1, 1, 1, 3, 3, 3, 3]) == (0, 2, ())  # all cached: nothing to write


def test_namespaces_never_share_blocks(make_store: MakeStore) -> None:
    store = make_store(cpu=8)
    insert(store, list(range(8)), ns="model-a")
    assert store.match("model-b", list(range(8))).num_tokens == 0
    assert store.match("model-a", list(range(8)), lease=False).num_tokens == 8


def test_namespace_checks_geometry_and_compat_key(make_store: MakeStore) -> None:
    store = make_store()
    good = KVLayout("m", "float32", 4, 2, 1, 4)
    assert store.namespace(good, good.compat_key()) == good.compat_key()
    with pytest.raises(InvalidRequestError, match="dtype 'float16' does not match the store's 'float32'"):
        store.namespace(KVLayout("m", "float16", 4, 2, 1, 4), "x")
    with pytest.raises(InvalidRequestError, match="head_dim 8 does not match"):
        store.namespace(KVLayout("m", "float32", 4, 2, 1, 8), "x")
    with pytest.raises(InvalidRequestError, match="another Grove version"):
        store.namespace(good, "0" * 32)


def test_a_cache_salt_is_a_namespace_of_its_own(make_store: MakeStore) -> None:
    """vLLM's cache_salt: a salted request's blocks are matched by its salt only, and never by an
    unsalted request (nor it by theirs); the name holds a digest, not the salt."""
    store = make_store(cpu=8)
    layout = KVLayout("m", "float32", 4, 2, 1, 4)
    key = layout.compat_key()
    plain, a, b = (store.namespace(layout, key, salt) for salt in ("", "secret-a", "secret-b"))
    assert plain == key and len({plain, a, b}) == 3 and "secret" not in a + b
    assert store.namespace(layout, key, "secret-a") == a
    insert(store, list(range(8)), ns=a)
    assert store.match(b, list(range(8)), lease=False).num_tokens == 0
    assert store.match(plain, list(range(8)), lease=False).num_tokens == 0
    assert store.match(a, list(range(8)), lease=False).num_tokens == 8
    insert(store, list(range(8)), ns=plain)  # the same tokens unsalted: blocks of its own
    assert store.stats().tiers[0].cached_blocks == 4


def test_leases_pin_and_expire(make_store: MakeStore, clock: Any) -> None:
    store = make_store(cpu=4, ttl=10.0)
    insert(store, list(range(8)))
    hit = store.match(NS, list(range(8)))
    assert all(store.tiers[0].allocator.refcount(h.block) == 2 for h in hit.handles)
    clock.now += 11.0
    assert store.expire() == 1
    assert all(store.tiers[0].allocator.refcount(h.block) == 1 for h in hit.handles)
    with pytest.raises(LeaseNotFoundError, match=f"lease {hit.lease_id} is unknown, released or expired"):
        store.release(hit.lease_id)
    store.check_integrity()


def test_expired_write_lease_frees_its_blocks(make_store: MakeStore, clock: Any) -> None:
    store = make_store(cpu=4, ttl=5.0)
    alloc = store.allocate(NS, list(range(16)))
    assert store.tiers[0].allocator.num_free == 0
    clock.now += 6.0
    with pytest.raises(LeaseNotFoundError):
        store.commit(alloc.lease_id)
    assert store.tiers[0].allocator.num_free == 4 and store.match(NS, list(range(16))).num_tokens == 0


def test_two_writers_of_one_prefix_first_commit_wins(make_store: MakeStore) -> None:
    store = make_store(cpu=8)
    tokens = list(range(12))
    first, second = store.allocate(NS, tokens), store.allocate(NS, tokens)
    assert len(first.handles) == len(second.handles) == 3 and not set(first.handles) & set(second.handles)
    for h in first.handles:
        store.block_view(h).fill_(1.0)
    for h in second.handles:
        store.block_view(h).fill_(2.0)
    assert store.commit(second.lease_id).num_new_blocks == 3
    assert store.commit(first.lease_id).num_new_blocks == 0  # lost: its blocks are freed
    assert store.tiers[0].allocator.num_used == 3
    hit = store.match(NS, tokens)
    assert hit.handles == second.handles and all(bool((store.block_view(h) == 2.0).all()) for h in hit.handles)
    store.release(hit.lease_id)


def test_writer_extending_a_concurrent_writers_blocks(make_store: MakeStore) -> None:
    store = make_store(cpu=8)
    short = store.allocate(NS, list(range(4)))
    long = store.allocate(NS, list(range(12)))
    store.commit(short.lease_id)
    assert store.commit(long.lease_id).num_new_blocks == 2  # block 0 came from `short`, 1-2 from `long`
    hit = store.match(NS, list(range(12)), lease=False)
    assert hit.num_tokens == 12


def test_full_store_refuses_then_recovers(make_store: MakeStore) -> None:
    store = make_store(cpu=3)
    insert(store, list(range(12)))
    hit = store.match(NS, list(range(12)))  # every block leased: nothing evictable
    with pytest.raises(StoreFullError, match="need 1 free blocks but only 0 can be freed"):
        store.allocate(NS, [7, 7, 7, 7])
    store.check_integrity()
    store.release(hit.lease_id)
    assert insert(store, [7, 7, 7, 7]) == 1  # now the LRU leaf is dropped to make room


def test_bad_tokens_are_refused(make_store: MakeStore) -> None:
    store = make_store()
    with pytest.raises(InvalidRequestError, match="need at least one full block of 4 tokens, got 3"):
        store.allocate(NS, [1, 2, 3])
    with pytest.raises(InvalidRequestError, match="non-negative"):
        store.match(NS, [1, -2, 3, 4])


def test_stream_pins_only_blocks_the_lease_holds(make_store: MakeStore) -> None:
    store = make_store(cpu=8)
    insert(store, list(range(8)))
    hit = store.match(NS, list(range(8)))
    with store.stream_blocks(hit.lease_id, hit.handles, write=False) as views:
        assert [v.numel() for v in views] == [256, 256]
        store.release(hit.lease_id)  # a release mid-stream keeps the rows pinned until the stream ends
        store.check_integrity()
    with pytest.raises(LeaseNotFoundError):
        with store.stream_blocks(hit.lease_id, hit.handles, write=False):
            pass
    alloc = store.allocate(NS, list(range(12)))
    with pytest.raises(LeaseNotFoundError, match="block cpu:7 is not held by lease"):
        with store.stream_blocks(alloc.lease_id, [BlockHandle("cpu", 7)], write=True):
            pass
    with pytest.raises(InvalidRequestError, match="is a write lease"):
        with store.stream_blocks(alloc.lease_id, alloc.handles, write=False):
            pass
    store.release(alloc.lease_id)


def test_check_integrity_catches_a_leaked_reference(make_store: MakeStore) -> None:
    store = make_store(cpu=4)
    insert(store, list(range(8)))
    store.tiers[0].allocator.share([0])  # a reference nobody accounts for
    with pytest.raises(AssertionError, match="refcount 2, owners \\+ pins 1"):
        store.check_integrity()
    store.tiers[0].allocator.free([0])  # repair, so the fixture's final check passes


def test_clear_drops_what_no_lease_holds(make_store: MakeStore) -> None:
    """vLLM's reset of the prefix cache: every unpinned block goes, in every tier and namespace; a
    leased block stays with its ancestors (its chain still matches); nothing counts as evicted."""
    store = make_store(upper=4, cpu=8)
    insert(store, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    insert(store, [1, 1, 1, 1, 5, 5, 5, 5])
    insert(store, list(range(8)), ns="other")
    held = store.match(NS, [1, 1, 1, 1, 2, 2, 2, 2])
    assert held.num_tokens == 8
    assert store.clear() == 4  # (3, 3, 3, 3), (5, 5, 5, 5) and "other"'s two blocks
    store.check_integrity()
    assert store.match(NS, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3], lease=False).num_tokens == 8
    assert store.match(NS, [1, 1, 1, 1, 5, 5, 5, 5], lease=False).num_tokens == 4
    assert store.match("other", list(range(8)), lease=False).num_tokens == 0
    assert sum(t.dropped_blocks for t in store.stats().tiers) == 0
    store.release(held.lease_id)
    assert store.clear() == 2 and store.stats().num_namespaces == 0
    assert sum(t.cached_blocks for t in store.stats().tiers) == 0
    store.check_integrity()
