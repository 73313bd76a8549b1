"""A kvstore process and worker processes move KV blocks through NIXL on loopback and through the
gRPC fallback; bytes are checked on both ends (the writer's source blocks against what another
process reads, and against what the other data plane reads back)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
import uvloop

from engine.kv_layout import KVLayout
from kvstore.client import KVStoreClient
from kvstore.nixl_plane import NixlPlane, nixl_available

ROOT = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("kvstore_peer.py")
LAYOUT = KVLayout("two-process", "float32", 16, 4, 2, 64)  # 64 KiB blocks
GEOMETRY_FLAGS = ["--dtype", "float32", "--block-size", "16", "--num-layers", "4", "--num-kv-heads", "2",
                  "--head-dim", "64"]
ENV = {**os.environ, "UCX_NET_DEVICES": "lo", "PYTHONPATH": str(ROOT)}

pytestmark = pytest.mark.skipif(not nixl_available(), reason="NIXL does not load here")


def start_store(tmp: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "port"
    proc = subprocess.Popen([sys.executable, "-m", "kvstore", "--address", "127.0.0.1:0", "--port-file",
                             str(port_file), "--check-integrity-on-exit", *GEOMETRY_FLAGS, *flags], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "store.log", "w"))
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert proc.poll() is None, f"kvstore exited: {(tmp / 'store.log').read_text()}"
        assert time.monotonic() < deadline, "kvstore did not report its port"
        time.sleep(0.05)
    return proc, f"127.0.0.1:{int(port_file.read_text())}"


def stop_store(proc: subprocess.Popen) -> int:
    proc.terminate()
    return proc.wait(timeout=30)


@pytest.fixture(scope="module")
def store_address() -> Iterator[str]:
    """One store process for the module: a 16-block upper tier (the "gpu" tier, standing in on CPU
    memory: no CUDA here) above a 64-block CPU tier."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, address = start_store(Path(tmp), "--gpu-capacity", "16blocks", "--gpu-device", "cpu",
                                    "--cpu-capacity", "64blocks")
        yield address
        code = stop_store(proc)
        log = (Path(tmp) / "store.log").read_text()
        assert code == 0 and "integrity checked" in log, f"store exited {code}:\n{log}"


def run_peer(address: str, start: int, stop: int, nixl: bool) -> dict:
    out = subprocess.run([sys.executable, str(PEER), "--address", address, "--tokens", f"{start}:{stop}",
                          "--nixl" if nixl else "--no-nixl"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def digests(pool: torch.Tensor, ids: range) -> list[str]:
    """sha256 of each block's bytes, as kvstore_peer.py reports them."""
    return [hashlib.sha256(pool[i].view(torch.uint8).numpy().tobytes()).hexdigest() for i in ids]


def write_then_read_back(address: str, tokens: list[int], pool: torch.Tensor, write_nixl: bool) -> None:
    """This process writes ``pool``'s first blocks for ``tokens`` over one plane and reads them back
    into fresh blocks over the other plane."""
    n = len(tokens) // LAYOUT.block_size

    async def main() -> None:
        async with KVStoreClient(address, LAYOUT, pool, use_nixl=write_nixl) as writer, \
                KVStoreClient(address, LAYOUT, pool, use_nixl=not write_nixl) as reader:
            assert writer.data_plane == ("nixl" if write_nixl else "grpc")
            assert reader.data_plane == ("grpc" if write_nixl else "nixl")
            assert await writer.write(tokens, list(range(n))) == n
            assert await writer.write(tokens, list(range(n))) == 0  # cached: nothing moves
            hit = await reader.match(tokens + [7])
            assert hit.num_tokens == n * LAYOUT.block_size
            await reader.read(hit, list(range(n, 2 * n)))
            await reader.release(hit.lease_id)
            assert (await reader.stats()).num_leases == 0

    uvloop.run(main())
    assert pool[n:2 * n].equal(pool[:n]), "the other data plane read back different bytes"


def test_nixl_write_then_peer_process_nixl_read(store_address: str) -> None:
    tokens = list(range(0, 8 * 16))
    pool = torch.randn(16, *LAYOUT.block_shape)
    write_then_read_back(store_address, tokens, pool, write_nixl=True)
    peer = run_peer(store_address, 0, len(tokens), nixl=True)
    assert peer["plane"] == "nixl" and peer["num_tokens"] == len(tokens)
    assert peer["digests"] == digests(pool, range(8))


def test_grpc_write_then_peer_process_grpc_read(store_address: str) -> None:
    tokens = list(range(1000, 1000 + 6 * 16 + 5))  # a trailing partial block is not cached
    pool = torch.randn(12, *LAYOUT.block_shape)
    write_then_read_back(store_address, tokens, pool, write_nixl=False)
    peer = run_peer(store_address, 1000, 1000 + 6 * 16 + 5, nixl=False)
    assert peer["plane"] == "grpc" and peer["num_tokens"] == 6 * 16
    assert peer["digests"] == digests(pool, range(6))


def test_nixl_reads_span_both_tiers_after_demotion(store_address: str) -> None:
    """20 blocks through a 16-block upper tier: the oldest move to the CPU tier with their bytes,
    and one NIXL read gathers from both tiers' registered pools."""
    pool = torch.randn(40, *LAYOUT.block_shape)
    tokens = list(range(5000, 5000 + 20 * 16))

    async def main() -> list[str]:
        async with KVStoreClient(store_address, LAYOUT, pool, use_nixl=True) as kv:
            for i in range(0, 20, 4):  # five requests of 4 blocks: a growing prompt
                await kv.write(tokens[:(i + 4) * 16], list(range(i + 4)))
            hit = await kv.match(tokens)
            await kv.read(hit, list(range(20, 40)))
            await kv.release(hit.lease_id)
            stats = await kv.stats()
            assert stats.tiers[0].demoted_blocks > 0
            return [h.tier for h in hit.handles]

    tiers = uvloop.run(main())
    assert {"gpu", "cpu"} <= set(tiers), tiers
    assert pool[20:40].equal(pool[:20])


def test_client_shares_a_workers_nixl_agent(store_address: str) -> None:
    """A prefill worker already has an agent with its engine pool registered (for decode's READs):
    the client uses it instead of making a second one, and leaves it open on close."""
    pool = torch.randn(8, *LAYOUT.block_shape)
    tokens = list(range(9000, 9000 + 4 * 16))
    plane = NixlPlane("test-worker")
    try:
        plane.register_pool("engine-kv", pool)

        async def main() -> None:
            async with KVStoreClient(store_address, LAYOUT, pool, plane=plane, plane_pool="engine-kv") as kv:
                assert kv.data_plane == "nixl"
                assert await kv.write(tokens, [0, 1, 2, 3]) == 4
                hit = await kv.match(tokens)
                await kv.read(hit, [7, 6, 5, 4])
                await kv.release(hit.lease_id)

        uvloop.run(main())
        assert pool[[7, 6, 5, 4]].equal(pool[:4])
        assert plane.export("engine-kv").num_blocks == 8  # still registered, still usable
    finally:
        plane.close()


def test_a_failed_nixl_transfer_is_redone_over_grpc(store_address: str) -> None:
    """NIXL failing with the store still answering over gRPC (here: the store's pools as this
    client sees them point at memory the store never registered, so NIXL refuses the transfer):
    the write and the read are done over gRPC instead, with the same bytes, and the client keeps
    to gRPC for a while without trying NIXL again."""
    pool = torch.randn(8, *LAYOUT.block_shape)
    tokens = list(range(9500, 9500 + 3 * 16))

    async def main() -> None:
        async with KVStoreClient(store_address, LAYOUT, pool, use_nixl=True) as kv:
            assert kv.data_plane == "nixl"
            kv._pools = {tier: dataclasses.replace(p, base_addr=p.base_addr + (1 << 40))  # nobody's memory
                         for tier, p in kv._pools.items()}
            assert await kv.write(tokens, [0, 1, 2]) == 3
            assert kv.nixl_fallbacks == 1
            hit = await kv.match(tokens)
            assert hit.num_tokens == len(tokens)
            assert await kv.read(hit, [5, 6, 7]) == 3 * LAYOUT.block_bytes
            await kv.release(hit.lease_id)
            assert kv.nixl_fallbacks == 1  # gRPC straight away: NIXL not tried again yet

    uvloop.run(main())
    assert pool[5:8].equal(pool[:3])


def test_nixl_reads_blocks_from_the_disk_tier(tmp_path: Path) -> None:
    """A store of 8 CPU blocks above a 64-block disk tier (a memory-mapped file): a prompt of 20
    blocks written over NIXL as it grows (its cached prefix pinned by each write, so the blocks past
    the CPU tier's 8 go to the file), and one NIXL read gathers from both tiers' registered memory,
    byte for byte. (Demotion into the file: tests/kvstore/test_kvstore_eviction.py.)"""
    proc, address = start_store(tmp_path, "--cpu-capacity", "8blocks", "--disk-capacity", "64blocks",
                                "--disk-path", str(tmp_path / "kv.disk"))
    pool = torch.randn(40, *LAYOUT.block_shape)
    tokens = list(range(9000, 9000 + 20 * 16))

    async def main() -> list[str]:
        async with KVStoreClient(address, LAYOUT, pool, use_nixl=True) as kv:
            assert kv.data_plane == "nixl"
            for i in range(0, 20, 4):
                await kv.write(tokens[:(i + 4) * 16], list(range(i + 4)))
            hit = await kv.match(tokens)
            await kv.read(hit, list(range(20, 40)))
            await kv.release(hit.lease_id)
            stats = await kv.stats()
            assert [(t.name, t.cached_blocks) for t in stats.tiers] == [("cpu", 8), ("disk", 12)]
            return [h.tier for h in hit.handles]

    try:
        tiers = uvloop.run(main())
    finally:
        code = stop_store(proc)
    assert {"cpu", "disk"} <= set(tiers), tiers
    assert pool[20:40].equal(pool[:20])
    assert code == 0 and "integrity checked" in (tmp_path / "store.log").read_text()
