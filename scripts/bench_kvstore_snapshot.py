"""What the kvstore's snapshot costs (not a test): a store of ``--capacity`` (SmolLM2's fp32 KV
blocks by default) filled with blocks, then

- a snapshot at once (as at shutdown): seconds;
- a snapshot while serving (``--snapshot-interval``'s): seconds, and how long the event loop was
  held at a time (a 1 ms ticker on the same loop: its worst and median lateness), which is what
  Match / Allocate / Commit calls arriving meanwhile wait at most.

    .venv/bin/python scripts/bench_kvstore_snapshot.py [--capacity 1GiB] [--dir /tmp]

The file goes to a temporary directory under ``--dir`` (its disk is part of what is timed).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvstore.config import BlockGeometry, StoreConfig, TierConfig, parse_capacity  # noqa: E402
from kvstore.snapshot import save_snapshot, save_snapshot_serving  # noqa: E402
from kvstore.store import KVStore  # noqa: E402

logger = logging.getLogger("bench_kvstore_snapshot")


def filled_store(capacity: str) -> KVStore:
    """A store whose CPU tier is full: prompts of 8 blocks, each block filled with its prompt's number."""
    geometry = BlockGeometry("float32", 16, 30, 3, 64)
    store = KVStore(StoreConfig(geometry, (TierConfig("cpu", "cpu", parse_capacity(capacity, geometry.block_bytes)),)))
    for i in range(store.tiers[0].capacity // 8):
        alloc = store.allocate("bench", [i * 1000 + j for j in range(16 * 8)])
        for h in alloc.handles:
            store.block_view(h).fill_(i)
        store.commit(alloc.lease_id)
    return store


async def serving(store: KVStore, path: Path) -> tuple[float, list[float]]:
    """The snapshot's seconds while a ticker on the loop records how late each 1 ms sleep woke."""
    late: list[float] = []

    async def ticker() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            late.append(time.perf_counter() - t - 0.001)

    tick = asyncio.create_task(ticker())
    start = time.perf_counter()
    await save_snapshot_serving(store, path)
    seconds = time.perf_counter() - start
    tick.cancel()
    return seconds, late


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capacity", default="1GiB")
    p.add_argument("--dir", default=tempfile.gettempdir())
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("kvstore.snapshot").setLevel(logging.WARNING)
    store = filled_store(args.capacity)
    mib = store.trie.num_nodes * store.block_bytes / 2**20
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        start = time.perf_counter()
        save_snapshot(store, Path(tmp) / "at-once")
        at_once = time.perf_counter() - start
        seconds, late = asyncio.run(serving(store, Path(tmp) / "serving"))
    logger.info("%d blocks (%.0f MiB): at once %.2f s; while serving %.2f s, the loop held at most %.1f ms "
                "(median lateness %.2f ms over %d ticks)", store.trie.num_nodes, mib, at_once, seconds,
                max(late) * 1e3, statistics.median(late) * 1e3, len(late))


if __name__ == "__main__":
    main()
