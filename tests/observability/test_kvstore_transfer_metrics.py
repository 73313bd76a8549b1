"""A kvstore process started as the launcher starts it (``--metrics-port 0``, JSON ready file) counts
the bytes and seconds of each data plane: exactly the bytes clients moved, per plane and direction."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import uvloop

from engine.kv_layout import KVLayout
from kvstore.client import KVStoreClient
from kvstore.nixl_plane import nixl_available
from tests.observability.conftest import ROOT, scrape, total

LAYOUT = KVLayout("obs", "float32", 16, 2, 2, 32)  # 16 KiB blocks
FLAGS = ["--dtype", "float32", "--block-size", "16", "--num-layers", "2", "--num-kv-heads", "2", "--head-dim", "32",
         "--cpu-capacity", "64blocks"]


@pytest.mark.parametrize("plane", ["grpc", "nixl"])
def test_transfer_counters_per_plane(plane: str, tmp_path: Path) -> None:
    if plane == "nixl" and not nixl_available():
        pytest.skip("NIXL does not load here")
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "kvstore", "--address", "127.0.0.1:0", "--metrics-port", "0",
                             "--ready-file", str(ready), *FLAGS, *([] if plane == "nixl" else ["--no-nixl"])],
                            cwd=ROOT, env={**os.environ, "UCX_NET_DEVICES": "lo"}, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "store.log", "w"))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "store.log").read_text()
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        address, metrics = f"127.0.0.1:{info['grpc_port']}", f"127.0.0.1:{info['metrics_port']}"
        pool = torch.randn(8, *LAYOUT.block_shape)
        tokens = list(range(100, 100 + 4 * 16))

        async def move() -> None:
            async with KVStoreClient(address, LAYOUT, pool, use_nixl=plane == "nixl") as client:
                assert client.data_plane == plane
                assert await client.write(tokens, [0, 1, 2, 3]) == 4
                hit = await client.match(tokens + [1])
                await client.read(hit._replace(handles=hit.handles[:3]), [4, 5, 6])
                await client.release(hit.lease_id)

        uvloop.run(move())
        assert pool[4:7].equal(pool[0:3])
        m = scrape(metrics)
        for direction, blocks in (("write", 4), ("read", 3)):
            for p in ("grpc", "nixl"):
                moved = total(m, "grove:kvstore_transfer_bytes_total", plane=p, direction=direction)
                assert moved == (blocks * LAYOUT.block_bytes if p == plane else 0), (p, direction, moved)
            assert total(m, "grove:kvstore_transfer_seconds_total", plane=plane, direction=direction) > 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, (tmp_path / "store.log").read_text()
