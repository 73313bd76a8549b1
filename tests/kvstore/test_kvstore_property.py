"""Property test: random insert / match / lease / release / expire sequences against a naive model.

The model keeps cached prefixes in a flat dict keyed by (namespace, block keys) and finds eviction
victims by brute force over it (least recent stamp among unpinned leaves of a tier); the store
does the same with a trie, per-tier heaps and a ref-counted allocator. After every step the two
must agree on what is cached, where, with which bytes, and how many rows are free; and
``check_integrity()`` must hold.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import count

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvstore.config import BlockGeometry, StoreConfig, TierConfig
from kvstore.errors import InvalidRequestError, LeaseNotFoundError, StoreFullError
from kvstore.store import KVStore

BLOCK = 2
CAPS = (3, 4)  # rows of the upper ("gpu" stand-in on CPU memory) and the cpu tier
TTL = 10.0
GEOMETRY = BlockGeometry("float32", block_size=BLOCK, num_layers=1, num_kv_heads=1, head_dim=2)
Prefix = tuple  # (namespace, (block key, ...))

tokens_st = st.lists(st.integers(0, 1), max_size=4 * BLOCK + 1)  # 4 block keys: prefixes collide often
ns_st = st.sampled_from(["a", "b"])


@dataclass
class Entry:
    tier: int
    stamp: int
    value: float


@dataclass
class ModelLease:
    kind: str
    deadline: float
    pinned: list[Prefix]
    ns: str = ""
    keys: tuple = ()
    pending: list[tuple[int, float]] = field(default_factory=list)  # (tier, value written)


class Model:
    def __init__(self) -> None:
        self.entries: dict[Prefix, Entry] = {}
        self.pins: Counter[Prefix] = Counter()
        self.free = list(CAPS)
        self.stamps = count(1)

    def path(self, ns: str, keys: tuple) -> list[Prefix]:
        out = []
        for i in range(1, len(keys) + 1):
            if (ns, keys[:i]) not in self.entries:
                break
            out.append((ns, keys[:i]))
        return out

    def touch(self, path: list[Prefix]) -> None:
        for p in reversed(path):
            self.entries[p].stamp = next(self.stamps)

    def children(self, p: Prefix) -> list[Prefix]:
        return [q for q in self.entries if q[0] == p[0] and len(q[1]) == len(p[1]) + 1 and q[1][:-1] == p[1]]

    def take(self, t: int, n: int) -> int:
        while self.free[t] < n and self.evict_one(t):
            pass
        got = min(n, self.free[t])
        self.free[t] -= got
        return got

    def evict_one(self, t: int) -> bool:
        def oldest(ok) -> Prefix | None:
            cands = [p for p, e in self.entries.items() if e.tier == t and not self.pins[p] and ok(p)]
            return min(cands, key=lambda p: self.entries[p].stamp) if cands else None

        if t + 1 < len(CAPS):
            p = oldest(lambda p: all(self.entries[c].tier > t for c in self.children(p)))
            if p is None:
                return False
            if self.take(t + 1, 1):
                self.entries[p].tier = t + 1
                self.free[t] += 1
                return True
        p = oldest(lambda p: not self.children(p))
        if p is None:
            return False
        del self.entries[p]
        self.free[t] += 1
        return True


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        tiers = (TierConfig("gpu", "cpu", CAPS[0]), TierConfig("cpu", "cpu", CAPS[1]))
        self.store = KVStore(StoreConfig(GEOMETRY, tiers, lease_ttl_s=TTL), clock=lambda: self.now)
        self.model = Model()
        self.leases: dict[int, ModelLease] = {}
        self.ended: list[int] = []
        self.values = count(1)

    def _keys(self, tokens: list[int]) -> tuple:
        return tuple(tuple(tokens[i:i + BLOCK]) for i in range(0, len(tokens) - BLOCK + 1, BLOCK))

    def _unpin(self, lease: ModelLease) -> None:
        for p in lease.pinned:
            self.model.pins[p] -= 1
        for tier, _ in lease.pending:
            self.model.free[tier] += 1

    @rule(ns=ns_st, tokens=tokens_st, lease=st.booleans())
    def match(self, ns: str, tokens: list[int], lease: bool) -> None:
        path = self.model.path(ns, self._keys(tokens))
        got = self.store.match(ns, tokens, lease=lease)
        assert got.num_tokens == len(path) * BLOCK
        if path:
            self.model.touch(path)
        if lease and path:
            assert [self.store._tier_index[h.tier] for h in got.handles] == [self.model.entries[p].tier for p in path]
            for h, p in zip(got.handles, path):
                assert bool((self.store.block_view(h) == self.model.entries[p].value).all()), f"{h} holds wrong KV"
            for p in path:
                self.model.pins[p] += 1
            self.leases[got.lease_id] = ModelLease("read", self.now + TTL, path)
        else:
            assert got.lease_id == 0 and got.handles == ()

    @rule(ns=ns_st, tokens=tokens_st)
    def allocate(self, ns: str, tokens: list[int]) -> None:
        keys = self._keys(tokens)
        if not keys:
            with pytest.raises(InvalidRequestError):
                self.store.allocate(ns, tokens)
            return
        m = self.model
        path = m.path(ns, keys)
        if path:
            m.touch(path)
        if len(path) == len(keys):
            assert self.store.allocate(ns, tokens) == (0, len(keys), ())
            return
        for p in path:
            m.pins[p] += 1
        need, tiers = len(keys) - len(path), []
        for t in range(len(CAPS)):
            tiers += [t] * m.take(t, need - len(tiers))
            if len(tiers) == need:
                break
        if len(tiers) < need:
            for t in tiers:
                m.free[t] += 1
            for p in path:
                m.pins[p] -= 1
            with pytest.raises(StoreFullError):
                self.store.allocate(ns, tokens)
            return
        got = self.store.allocate(ns, tokens)
        assert got.num_cached_blocks == len(path)
        assert [self.store._tier_index[h.tier] for h in got.handles] == tiers
        pending = []
        for h, t in zip(got.handles, tiers):
            value = float(next(self.values))
            self.store.block_view(h).fill_(value)
            pending.append((t, value))
        self.leases[got.lease_id] = ModelLease("write", self.now + TTL, path, ns, keys, pending)

    @precondition(lambda self: any(lease.kind == "write" for lease in self.leases.values()))
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from([i for i, le in self.leases.items() if le.kind == "write"]))
        lease = self.leases.pop(lease_id)
        m, nc, new = self.model, len(lease.pinned), 0
        for i in range(nc, len(lease.keys)):
            p = (lease.ns, lease.keys[:i + 1])
            tier, value = lease.pending[i - nc]
            if p in m.entries:
                m.free[tier] += 1  # lost to an earlier commit
            else:
                m.entries[p] = Entry(tier, 0, value)
                new += 1
        m.touch([(lease.ns, lease.keys[:i + 1]) for i in range(len(lease.keys))])
        for p in lease.pinned:
            m.pins[p] -= 1
        assert self.store.commit(lease_id).num_new_blocks == new
        self.ended.append(lease_id)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(list(self.leases)))  # insertion order: ids are random
        self._unpin(self.leases.pop(lease_id))
        self.store.release(lease_id)
        self.ended.append(lease_id)

    @precondition(lambda self: self.ended)
    @rule(data=st.data())
    def release_ended_lease(self, data: st.DataObject) -> None:
        with pytest.raises(LeaseNotFoundError):
            self.store.release(data.draw(st.sampled_from(self.ended)))

    @rule(dt=st.sampled_from([1.0, TTL / 2, TTL]))
    def advance_clock(self, dt: float) -> None:
        self.now += dt
        for lease_id in [i for i, le in self.leases.items() if le.deadline <= self.now]:
            self._unpin(self.leases.pop(lease_id))
            self.ended.append(lease_id)
        self.store.expire()

    @invariant()
    def agrees_with_model(self) -> None:
        self.store.check_integrity()
        cached = {}
        for node in self.store.trie.nodes():
            keys, n = [], node
            while n.parent is not None:
                keys.append(n.key)
                n = n.parent
            cached[(node.namespace, tuple(reversed(keys)))] = node
        assert set(cached) == set(self.model.entries), "cached prefixes differ from the model's"
        for p, node in cached.items():
            entry = self.model.entries[p]
            assert node.tier == entry.tier, f"{p} in tier {node.tier}, model says {entry.tier}"
            assert bool((self.store.block_view(self.store.handle(node)) == entry.value).all()), f"{p} bytes"
        assert [t.allocator.num_free for t in self.store.tiers] == self.model.free
        assert len(self.store.leases) == len(self.leases)


StoreMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_store_against_model = StoreMachine.TestCase
