"""The kvstore's cache across restarts (``--snapshot``): a store's blocks, bytes, namespaces and
recency written and read back into a new store (smaller, or of one tier); a snapshot of another
geometry or a broken one left unread; one taken while the store serves (``--snapshot-interval``)
leaving out a block evicted before its turn, and written only when the cache changed; and
``python -m kvstore --snapshot`` keeping what a client wrote across a SIGTERM and a start, and
across a SIGKILL from its last snapshot while serving."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import uvloop
from prometheus_client import CollectorRegistry, generate_latest

from kvstore.client import KVStoreClient
from kvstore.config import BlockGeometry, StoreConfig, TierConfig
import kvstore.snapshot as snapshot_mod
from kvstore.metrics import StoreCollector
from kvstore.snapshot import SnapshotWriter, load_snapshot, save_snapshot, snapshot_periodically
from kvstore.store import KVStore
from tests.kvstore.conftest import GEOMETRY
from tests.kvstore.test_kvstore_grpc import LAYOUT
from tests.kvstore.test_kvstore_store import NS, MakeStore, insert

ROOT = Path(__file__).resolve().parents[2]


def _bytes(store: KVStore, ns: str, tokens: list[int]) -> list[list[float]]:
    hit = store.match(ns, tokens)
    try:
        return [store.block_view(h).flatten().tolist() for h in hit.handles]
    finally:
        if hit.lease_id:
            store.release(hit.lease_id)


def test_a_snapshot_brings_back_every_block_its_bytes_and_recency(make_store: MakeStore, tmp_path: Path) -> None:
    old = make_store(upper=2, cpu=8)  # blocks in both tiers
    a, b, c = list(range(12)), [0, 1, 2, 3, 9, 9, 9, 9], [5] * 8
    insert(old, a, 1.0)
    insert(old, b, 10.0)
    insert(old, c, 20.0, ns="other")
    want = {(NS, tuple(a)): _bytes(old, NS, a), (NS, tuple(b)): _bytes(old, NS, b), ("other", tuple(c)): _bytes(old, "other", c)}
    old.match(NS, a, lease=False)  # a's path is now the most recent; b's own block the least
    path = tmp_path / "kv.snapshot"
    assert save_snapshot(old, path) == 3 + 1 + 2
    new = make_store(cpu=16)  # one tier now
    assert load_snapshot(new, path) == 6
    new.check_integrity()
    # recency kept: b's own block is the least recent, a's first block (the parent of a and b) the most
    order = new.lru.nodes(0)
    assert order[0].key == (9, 9, 9, 9) and order[-1].key == tuple(a[:4])
    for (ns, tokens), blocks in want.items():
        assert _bytes(new, ns, list(tokens)) == blocks


def test_a_smaller_store_loads_what_fits_with_its_ancestors(make_store: MakeStore, tmp_path: Path) -> None:
    old = make_store(cpu=8)
    insert(old, list(range(16)))  # 4 blocks, one chain
    save_snapshot(old, tmp_path / "s")
    small = make_store(cpu=2)
    assert load_snapshot(small, tmp_path / "s") == 2
    small.check_integrity()
    assert small.match(NS, list(range(16)), lease=False).num_tokens == 8


def test_another_geometry_or_a_broken_file_is_left_unread(make_store: MakeStore, tmp_path: Path) -> None:
    old = make_store(cpu=8)
    insert(old, list(range(8)))
    save_snapshot(old, tmp_path / "s")
    other = KVStore(StoreConfig(BlockGeometry("float32", 4, 3, 1, 4), (TierConfig("cpu", "cpu", 8),)))
    assert load_snapshot(other, tmp_path / "s") == 0 and other.trie.num_nodes == 0
    data = (tmp_path / "s").read_bytes()
    (tmp_path / "cut").write_bytes(data[:-10])  # its end (the header's offset) cut off
    assert load_snapshot(make_store(cpu=8), tmp_path / "cut") == 0
    (tmp_path / "junk").write_bytes(b"not a snapshot\n")
    assert load_snapshot(make_store(cpu=8), tmp_path / "junk") == 0
    (tmp_path / "short").write_bytes(data[4:])  # a block's bytes short: the offset is past the header
    assert load_snapshot(make_store(cpu=8), tmp_path / "short") == 0
    assert load_snapshot(make_store(cpu=8), tmp_path / "absent") == 0
    assert not (tmp_path / "s.tmp").exists()  # written whole, then renamed


def test_a_snapshot_taken_while_the_store_serves_leaves_out_a_block_evicted_before_its_turn(
        make_store: MakeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer copies a block at a time; between two copies the store evicts a block not yet
    copied (to make room for a new prompt): the snapshot holds the others, whole, and loads into a
    sound store; the new prompt's blocks, cached after the snapshot began, are not in it."""
    monkeypatch.setattr(snapshot_mod, "COPY_BLOCKS", 1)
    store = make_store(cpu=6)
    a, c, d = list(range(12)), [5] * 8, [7] * 8  # 3 blocks, 2 blocks, then 2 more: one must go
    insert(store, a, 1.0)
    insert(store, c, 10.0)
    want = {tuple(a[:8]): _bytes(store, NS, a[:8]), tuple(c): _bytes(store, NS, c)}
    writer = SnapshotWriter(store, tmp_path / "s")
    first = writer.copy()  # a root's child: a's first block or c's
    assert first is not None and len(first) == 1
    writer.write(first)
    version = store.version
    insert(store, d, 20.0)  # evicts the least recent leaf: a's last block, not copied yet
    assert store.version > version and store.match(NS, a, lease=False).num_tokens == 8
    while (data := writer.copy()) is not None:
        writer.write(data)
    assert writer.finish() == 4
    new = make_store(cpu=8)
    assert load_snapshot(new, tmp_path / "s") == 4
    new.check_integrity()
    assert new.match(NS, a, lease=False).num_tokens == 8 and new.match(NS, d, lease=False).num_tokens == 0
    for tokens, blocks in want.items():
        assert _bytes(new, NS, list(tokens)) == blocks


def test_a_serving_store_writes_its_snapshot_when_its_cache_changed(make_store: MakeStore, tmp_path: Path) -> None:
    """Every interval, a snapshot where a block was cached or evicted since the last one, none
    otherwise; its metrics count them."""
    store = make_store(cpu=8)
    path = tmp_path / "s"

    async def until(done: Callable[[], bool]) -> None:
        for _ in range(500):
            if done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("no snapshot written in 5 s")

    async def serve() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(snapshot_periodically(store, path, 0.02, stop))
        await asyncio.sleep(0.2)
        assert not path.exists()  # nothing cached yet: nothing written
        insert(store, list(range(8)))
        await until(lambda: store.snapshot_stats.written == 1)
        await asyncio.sleep(0.2)  # ten intervals, nothing changed
        assert store.snapshot_stats.written == 1
        insert(store, list(range(8)) + [9] * 8)
        await until(lambda: store.snapshot_stats.written == 2)
        stop.set()
        await task

    asyncio.run(serve())
    assert load_snapshot(make_store(cpu=8), path) == 4
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    text = generate_latest(registry).decode()
    assert 'grove:kvstore_snapshots_total{outcome="written"} 2.0' in text
    assert 'grove:kvstore_snapshots_total{outcome="failed"} 0.0' in text
    assert "grove:kvstore_snapshot_blocks 4.0" in text


def _start(tmp: Path, snapshot: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    port_file = tmp / f"port-{time.monotonic_ns()}"
    g = GEOMETRY
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstore", "--address", "127.0.0.1:0", "--port-file", str(port_file), "--no-nixl",
         "--cpu-capacity", "64blocks", "--dtype", g.dtype, "--block-size", str(g.block_size), "--num-layers",
         str(g.num_layers), "--num-kv-heads", str(g.num_kv_heads), "--head-dim", str(g.head_dim),
         "--snapshot", str(snapshot), "--grace-period", "1", "--check-integrity-on-exit", *extra],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "kvstore did not start"
        time.sleep(0.05)
    return proc, f"127.0.0.1:{int(port_file.read_text())}"


TOKENS = list(range(4 * 3 + 1))  # three full blocks of 4


async def _write(address: str, pool: torch.Tensor) -> None:
    """Writes TOKENS' three blocks from rows 0-2 of ``pool``."""
    async with KVStoreClient(address, LAYOUT, pool, use_nixl=False) as kv:
        assert await kv.write(TOKENS, [0, 1, 2]) == 3


async def _read(address: str, pool: torch.Tensor) -> int:
    """Reads what the store has of TOKENS into rows 5-7 of ``pool``; how many tokens it had."""
    async with KVStoreClient(address, LAYOUT, pool, use_nixl=False) as kv:
        hit = await kv.match(TOKENS)
        if hit.num_tokens:
            await kv.read(hit, [5, 6, 7])
            await kv.release(hit.lease_id)
        return hit.num_tokens


def test_the_store_process_keeps_its_cache_across_a_restart(tmp_path: Path) -> None:
    """What a client wrote is there after a SIGTERM and a start with the same ``--snapshot``."""
    pool = torch.randn(8, *LAYOUT.block_shape)
    snapshot = tmp_path / "kv.snapshot"
    proc, address = _start(tmp_path, snapshot)
    try:
        uvloop.run(_write(address, pool))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        assert snapshot.exists()
        proc, address = _start(tmp_path, snapshot)
        assert uvloop.run(_read(address, pool)) == 12
        assert pool[5].equal(pool[0]) and pool[6].equal(pool[1]) and pool[7].equal(pool[2])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        proc, address = _start(tmp_path, tmp_path / "elsewhere")  # without it: a cold store
        assert uvloop.run(_read(address, pool)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_store_killed_while_serving_comes_back_with_its_last_snapshot(tmp_path: Path) -> None:
    """With ``--snapshot-interval``, what a client wrote is there after a SIGKILL (no shutdown, so
    no snapshot at exit): the store wrote it while it served."""
    pool = torch.randn(8, *LAYOUT.block_shape)
    snapshot = tmp_path / "kv.snapshot"
    proc, address = _start(tmp_path, snapshot, "--snapshot-interval", "0.2")
    try:
        uvloop.run(_write(address, pool))
        deadline = time.monotonic() + 30
        while not snapshot.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no snapshot written while serving"
            time.sleep(0.05)
        proc.kill()
        proc.wait(30)
        proc, address = _start(tmp_path, snapshot)
        assert uvloop.run(_read(address, pool)) == 12
        assert pool[5].equal(pool[0]) and pool[6].equal(pool[1]) and pool[7].equal(pool[2])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
