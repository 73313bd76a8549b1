"""The kvstore's cache kept across restarts (``--snapshot PATH``): written when the store shuts
down, read when it starts, so a rolling restart or an upgrade of the store keeps the deployment's
prefix cache warm.

One file: a first line of JSON (the format, the block geometry, the namespaces, and for every
cached block, parents before children: its parent's index, its namespace, its tokens and its
recency), then the blocks' bytes in that order. KV is content-addressed: a namespace names the
model's fingerprint, its layout and Grove's version (engine.kv_layout's compat key) and a block is
the KV of its tokens after its parents', so a snapshot never goes stale, however old; KV under a
namespace no worker asks for any more is evicted like any cold block. It is written to PATH.tmp and
renamed over PATH: a crash mid-write leaves the last one whole.

At start the blocks go to the bottom tier (CPU, or disk where there is one), recency kept; where
the store was made smaller, as many as fit (a block only with its ancestors). A file of another
geometry, or broken, is left unread: the store starts empty and says why.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from kvstore.store import KVStore
from kvstore.trie import TrieNode

logger = logging.getLogger(__name__)

FORMAT = "grove-kvstore-snapshot/1"
CHUNK_BLOCKS = 64  # blocks read from the file into the pool at a time


def _geometry(store: KVStore) -> dict[str, object]:
    g = store.geometry
    return {"dtype": g.dtype, "block_size": g.block_size, "num_layers": g.num_layers,
            "num_kv_heads": g.num_kv_heads, "head_dim": g.head_dim, "block_bytes": store.block_bytes}


def save_snapshot(store: KVStore, path: str | Path) -> int:
    """Writes every cached block of ``store`` to ``path``; how many."""
    path = Path(path)
    nodes = list(store.trie.nodes())  # parents before children
    index = {id(n): i for i, n in enumerate(nodes)}
    namespaces = sorted({n.namespace for n in nodes})
    ns_index = {ns: i for i, ns in enumerate(namespaces)}
    header = {"format": FORMAT, "geometry": _geometry(store), "namespaces": namespaces,
              "blocks": [[index.get(id(n.parent), -1), ns_index[n.namespace], list(n.key), n.stamp] for n in nodes]}
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        for n in nodes:
            f.write(store.tiers[n.tier].pool_bytes[n.block].cpu().numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    logger.info("snapshot of %d cached blocks (%d namespaces, %.1f MiB) written to %s", len(nodes), len(namespaces),
                len(nodes) * store.block_bytes / 2**20, path)
    return len(nodes)


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
            header = json.loads(f.readline())
            if header.get("format") != FORMAT:
                raise ValueError(f"format {header.get('format')!r}, not {FORMAT!r}")
            if header["geometry"] != _geometry(store):
                raise ValueError(f"its blocks are {header['geometry']}, this store's {_geometry(store)}")
            blocks = header["blocks"]
            size = path.stat().st_size - f.tell()
            if size != len(blocks) * store.block_bytes:
                raise ValueError(f"{size} bytes of blocks for {len(blocks)} blocks of {store.block_bytes}")
        except (ValueError, KeyError, TypeError) as e:  # (json's errors are ValueErrors)
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
