"""The kvstore's cache kept across restarts and crashes (``--snapshot PATH``): written when the
store shuts down and, with ``--snapshot-interval``, every so often while it serves (only when the
cache changed since the last one), read when it starts; so a rolling restart, an upgrade, or a
crash of the store keeps the deployment's prefix cache warm (a crash loses what came after the
last snapshot).

One file: the blocks' bytes, then a line of JSON (the format, the block geometry, the namespaces,
and for every block in the file's order, parents before children: its parent's index, its
namespace, its tokens and its recency), then the JSON's offset (8 bytes, little-endian). The
header comes last because a snapshot taken while the store serves learns which blocks it holds
only as it copies them: a block evicted before its turn is left out (its children were evicted
before it: only leaves are). KV is content-addressed: a namespace names the model's fingerprint,
its layout and Grove's version (engine.kv_layout's compat key) and a block is the KV of its tokens
after its parents', so a snapshot never goes stale, however old; KV under a namespace no worker
asks for any more is evicted like any cold block. It is written to PATH.tmp and renamed over PATH:
a crash mid-write leaves the last one whole.

At start the blocks go to the bottom tier (CPU, or disk where there is one), recency kept; where
the store was made smaller, as many as fit (a block only with its ancestors). A file of another
geometry or format, or a broken one, is left unread: the store starts empty and says why.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from kvstore.store import KVStore
from kvstore.trie import TrieNode

logger = logging.getLogger(__name__)

FORMAT = "grove-kvstore-snapshot/2"
CHUNK_BLOCKS = 64  # blocks read into the store at a time
COPY_BLOCKS = 16  # blocks copied out of a serving store at a time (on its loop: ~12 MB of SmolLM2's fp32 KV)
_TRAILER = struct.Struct("<Q")  # the header's offset


def _geometry(store: KVStore) -> dict[str, object]:
    g = store.geometry
    return {"dtype": g.dtype, "block_size": g.block_size, "num_layers": g.num_layers,
            "num_kv_heads": g.num_kv_heads, "head_dim": g.head_dim, "block_bytes": store.block_bytes}


class SnapshotWriter:
    """One snapshot of ``store`` to ``path``: ``copy`` (on the store's thread: between two calls
    the store may serve) the next blocks' bytes, ``write`` them (any thread), until ``copy`` gives
    None; then ``finish``. ``abort`` removes the unfinished file."""

    def __init__(self, store: KVStore, path: str | Path) -> None:
        self.store = store
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.version = store.version  # what the cache was when the snapshot began
        self._todo = list(store.trie.nodes())  # parents before children
        self._next = 0
        self._kept: list[TrieNode] = []
        self._index: dict[int, int] = {}  # id(node) -> its place in the file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = open(self.tmp, "wb")

    def copy(self) -> np.ndarray | None:
        """The bytes ([n, block_bytes] uint8) of the next up to COPY_BLOCKS blocks still cached (a
        block evicted since the snapshot began is left out, and so is one whose parent was); None
        when all are copied."""
        if self._next >= len(self._todo):
            return None
        chunk = self._todo[self._next:self._next + COPY_BLOCKS]
        self._next += len(chunk)
        kept = []
        for n in chunk:
            if n.block >= 0 and n.parent is not None and (n.parent.is_root or id(n.parent) in self._index):
                self._index[id(n)] = len(self._kept)
                self._kept.append(n)
                kept.append(n)
        out = torch.empty(len(kept), self.store.block_bytes, dtype=torch.uint8)
        for t, tier in enumerate(self.store.tiers):
            at = [i for i, n in enumerate(kept) if n.tier == t]
            if at:
                rows = torch.tensor([kept[i].block for i in at], device=tier.pool_bytes.device)
                out[torch.tensor(at)] = tier.pool_bytes.index_select(0, rows).cpu()
        return out.numpy()

    def write(self, data: np.ndarray) -> None:
        self._file.write(memoryview(data))

    def finish(self) -> int:
        """Writes the header, renames the file over ``path``; how many blocks it holds."""
        namespaces = sorted({n.namespace for n in self._kept})
        ns_index = {ns: i for i, ns in enumerate(namespaces)}
        header = {"format": FORMAT, "geometry": _geometry(self.store), "namespaces": namespaces,
                  "blocks": [[self._index.get(id(n.parent), -1), ns_index[n.namespace], list(n.key), n.stamp]
                             for n in self._kept]}
        offset = len(self._kept) * self.store.block_bytes
        self._file.write(json.dumps(header, separators=(",", ":")).encode() + b"\n" + _TRAILER.pack(offset))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        logger.info("snapshot of %d cached blocks (%d namespaces, %.1f MiB) written to %s", len(self._kept),
                    len(namespaces), offset / 2**20, self.path)
        return len(self._kept)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def save_snapshot(store: KVStore, path: str | Path) -> int:
    """Writes every cached block of ``store`` to ``path`` at once (the store stopped); how many."""
    writer = SnapshotWriter(store, path)
    try:
        while (data := writer.copy()) is not None:
            writer.write(data)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


async def save_snapshot_serving(store: KVStore, path: str | Path) -> int:
    """``save_snapshot`` while the store serves (on its event loop): the blocks are copied a chunk
    at a time on the loop, the file written on another thread meanwhile; how many blocks."""
    start = time.perf_counter()
    writer = SnapshotWriter(store, path)
    try:
        while (data := writer.copy()) is not None:
            await asyncio.to_thread(writer.write, data)
        n = await asyncio.to_thread(writer.finish)
    except BaseException:
        store.snapshot_stats.failed += 1
        writer.abort()
        raise
    stats = store.snapshot_stats
    stats.written += 1
    stats.blocks, stats.seconds, stats.at = n, time.perf_counter() - start, time.time()
    return n


async def snapshot_periodically(store: KVStore, path: str | Path, interval_s: float, stop: asyncio.Event) -> None:
    """Every ``interval_s`` until ``stop`` is set, a snapshot of the store where its cache changed
    since the last one (a failed one is said and tried again at the next)."""
    written = store.version  # the cache as loaded from the snapshot (or empty): nothing to write yet
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
            return
        except asyncio.TimeoutError:
            pass
        if store.version == written:
            continue
        version = store.version
        try:
            await save_snapshot_serving(store, path)
            written = version
        except Exception:  # (counted in its metrics) the store serves on; the next one may do
            logger.exception("snapshot not written to %s (tried again in %.0f s)", path, interval_s)


def load_snapshot(store: KVStore, path: str | Path) -> int:
    """Reads the snapshot at ``path`` into an empty ``store``; how many blocks it cached (0 where
    there is none, or it does not fit the store: said in the log)."""
    path = Path(path)
    if not path.exists():
        logger.info("no snapshot at %s: the cache starts empty", path)
        return 0
    assert store.trie.num_nodes == 0, "a snapshot loads into an empty store"
    with open(path, "rb") as f:
        try:
            size = path.stat().st_size
            if size < _TRAILER.size:
                raise ValueError(f"{size} bytes: too short for a snapshot")
            f.seek(size - _TRAILER.size)
            (offset,) = _TRAILER.unpack(f.read(_TRAILER.size))
            if offset > size - _TRAILER.size:
                raise ValueError(f"its header's offset {offset} is past its end ({size} bytes)")
            f.seek(offset)
            header = json.loads(f.read(size - _TRAILER.size - offset))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ValueError(f"format {header.get('format') if isinstance(header, dict) else None!r}, "
                                 f"not {FORMAT!r}")
            if header["geometry"] != _geometry(store):
                raise ValueError(f"its blocks are {header['geometry']}, this store's {_geometry(store)}")
            blocks = header["blocks"]
            if offset != len(blocks) * store.block_bytes:
                raise ValueError(f"{offset} bytes of blocks for {len(blocks)} blocks of {store.block_bytes}")
            f.seek(0)
        except (ValueError, KeyError, TypeError) as e:  # (json's errors are ValueErrors; a non-UTF-8 one too)
            logger.error("snapshot %s not loaded, the cache starts empty: %s", path, e)
            return 0
        bottom = len(store.tiers) - 1
        tier = store.tiers[bottom]
        n = min(len(blocks), tier.allocator.num_free)
        if n < len(blocks):
            logger.warning("snapshot %s holds %d blocks, the %s tier %d: the first %d (with their ancestors) load",
                           path, len(blocks), tier.name, tier.capacity, n)
        rows = tier.allocator.allocate(n)
        nodes: list[TrieNode] = []
        for (parent, ns, key, _), row in zip(blocks[:n], rows):
            above = nodes[parent] if parent >= 0 else store.trie.root(header["namespaces"][ns])
            nodes.append(store.trie.add_child(above, tuple(key), bottom, row))
        for start in range(0, n, CHUNK_BLOCKS):
            count = min(CHUNK_BLOCKS, n - start)
            data = np.frombuffer(f.read(count * store.block_bytes), dtype=np.uint8).reshape(count, store.block_bytes)
            index = torch.tensor(rows[start:start + count], dtype=torch.long)
            tier.pool_bytes.index_copy_(0, index, torch.from_numpy(data.copy()).to(tier.pool_bytes.device))
    for i in sorted(range(n), key=lambda i: blocks[i][3]):  # oldest first: recency as it was
        store.lru.add(nodes[i])
    logger.info("snapshot %s loaded: %d cached blocks in %d namespaces", path, n, len(store.trie.roots))
    return n
