"""Benchmark of the KV store (not a test). Two claims, each printed as baseline vs contender:

1. Index: ``match`` latency p50/p99 with 100,000 cached blocks (in-process store, tiny blocks),
   for a 100-block (1,600-token) hit (lease + release), a peek and a miss, and the same Match
   through gRPC; the same with 1,000 cached blocks as the baseline (cost must follow the prefix,
   not the store).
2. Data plane: reading (and writing) 64 MiB of KV blocks between two processes, a ``python -m
   kvstore`` process and this one, over NIXL against the gRPC fallback stream.

    .venv/bin/python scripts/bench_kvstore.py [--json results.json]

Set UCX_NET_DEVICES=lo (the default here) for loopback; UCX_TLS picks UCX transports.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the generated `grove` stubs live at the repo root

import grpc  # noqa: E402
import torch  # noqa: E402
import uvloop  # noqa: E402

from engine.kv_layout import KVLayout  # noqa: E402
from grove.internal.v1 import kvstore_pb2 as pb  # noqa: E402
from grove.internal.v1 import kvstore_pb2_grpc as pb_grpc  # noqa: E402
from kvstore.client import KVStoreClient  # noqa: E402
from kvstore.config import BlockGeometry, ServerConfig, StoreConfig, TierConfig  # noqa: E402
from kvstore.server import connect_info, create_server  # noqa: E402
from kvstore.servicer import KVStoreServicer  # noqa: E402
from kvstore.store import KVStore  # noqa: E402
from protocol import kvstore as convert  # noqa: E402

logger = logging.getLogger("bench_kvstore")


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]


# ---- 1. the index ---------------------------------------------------------------------------
def bench_match(num_blocks: int, hit_blocks: int, iters: int) -> dict:
    layout = KVLayout("bench-index", "float32", 16, 1, 1, 2)  # 256-byte blocks: 100k blocks = 25 MB
    store = KVStore(StoreConfig(BlockGeometry.of(layout), (TierConfig("cpu", "cpu", num_blocks),)))
    ns = layout.compat_key()
    per_prompt = hit_blocks
    prompts = [[p * 1_000_000 + i for i in range(per_prompt * 16)] for p in range(num_blocks // per_prompt)]
    t0 = time.perf_counter()
    for tokens in prompts:
        store.commit(store.allocate(ns, tokens).lease_id)
    fill_s = time.perf_counter() - t0
    assert store.trie.num_nodes == num_blocks, store.trie.num_nodes
    hit, miss, peek = [], [], []
    for i in range(iters):
        tokens = prompts[(i * 7919) % len(prompts)]
        t = time.perf_counter()
        m = store.match(ns, tokens)
        store.release(m.lease_id)
        hit.append(time.perf_counter() - t)
        assert m.num_tokens == len(tokens)
        t = time.perf_counter()
        store.match(ns, tokens, lease=False)
        peek.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.match(ns, [7] * len(tokens))
        miss.append(time.perf_counter() - t)
    store.check_integrity()

    async def over_grpc() -> list[float]:
        servicer = KVStoreServicer(store, connect_info(store, None, ServerConfig()))
        server, port = await create_server("127.0.0.1:0", servicer)
        ns_pb = convert.namespace_to_pb(layout)
        out = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.KVStoreStub(channel)
            for i in range(iters // 4):
                tokens = prompts[(i * 7919) % len(prompts)]
                t = time.perf_counter()
                reply = await stub.Match(pb.MatchRequest(ns=ns_pb, tokens=tokens))
                await stub.Release(pb.ReleaseRequest(lease_id=reply.lease_id))
                out.append(time.perf_counter() - t)
        await server.stop(None)
        return out

    rpc = uvloop.run(over_grpc())
    us = lambda xs: [round(x * 1e6, 1) for x in percentiles(xs)]  # noqa: E731
    return {"cached_blocks": num_blocks, "hit_blocks": hit_blocks, "fill_s": round(fill_s, 2),
            "hit_lease_release_us": us(hit), "hit_peek_us": us(peek), "miss_us": us(miss),
            "grpc_match_release_us": us(rpc)}


# ---- 2. the data planes ---------------------------------------------------------------------
def start_store(tmp: Path, layout: KVLayout, blocks: int) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "port"
    cmd = [sys.executable, "-m", "kvstore", "--address", "127.0.0.1:0", "--port-file", str(port_file),
           "--dtype", layout.dtype, "--block-size", str(layout.block_size), "--num-layers", str(layout.num_layers),
           "--num-kv-heads", str(layout.num_kv_heads), "--head-dim", str(layout.head_dim),
           "--cpu-capacity", f"{blocks}blocks", "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("kvstore did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{int(port_file.read_text())}"


async def bench_planes(address: str, layout: KVLayout, num_blocks: int, iters: int) -> dict:
    pool = torch.randn(3 * num_blocks, *layout.block_shape)
    src, dst = list(range(num_blocks)), list(range(num_blocks, 2 * num_blocks))
    total = num_blocks * layout.block_bytes
    out: dict[str, dict] = {}
    async with KVStoreClient(address, layout, pool, use_nixl=True) as nixl, \
            KVStoreClient(address, layout, pool, use_nixl=False) as fallback:
        assert nixl.data_plane == "nixl", "NIXL did not come up"
        for k, (name, kv) in enumerate((("nixl", nixl), ("grpc", fallback))):
            reads, writes = [], []
            for i in range(iters + 1):  # the first round warms connections up and is not counted
                tokens = [1_000_000 + 100 * k + i] + list(range(1, num_blocks * layout.block_size))  # all new
                t = time.perf_counter()
                assert await kv.write(tokens, src) == num_blocks
                w = time.perf_counter() - t
                hit = await kv.match(tokens)
                pool[dst] = 0
                t = time.perf_counter()
                await kv.read(hit, dst)
                r = time.perf_counter() - t
                await kv.release(hit.lease_id)
                assert pool[dst].equal(pool[src]), f"{name}: bytes differ after the read"
                if i:
                    reads.append(total / r / 1e9)
                    writes.append(total / w / 1e9)
            out[name] = {"read_GBps": round(statistics.median(reads), 3),
                         "write_GBps": round(statistics.median(writes), 3)}
            logger.info("%s: %s", name, out[name])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cached-blocks", type=int, default=100_000)
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--transfer-mib", type=int, default=64)
    p.add_argument("--transfer-iters", type=int, default=5)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("UCX_NET_DEVICES", "lo")

    logger.info("index: 1,000 and %d cached blocks", args.cached_blocks)
    small = bench_match(1000, 100, args.iters)
    index = bench_match(args.cached_blocks, 100, args.iters)
    layout = KVLayout("bench-planes", "float32", 16, 16, 4, 64)  # 1 MiB blocks
    num_blocks = (args.transfer_mib << 20) // layout.block_bytes
    with tempfile.TemporaryDirectory() as tmp:
        proc, address = start_store(Path(tmp), layout, 4 * num_blocks)
        try:
            planes = uvloop.run(bench_planes(address, layout, num_blocks, args.transfer_iters))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"\nmatch of a {index['hit_blocks']}-block prompt, p50 / p99 in microseconds "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"  {'':24s} {'1,000 cached':>18s} {f'{args.cached_blocks:,} cached':>18s} {'p50 ratio':>10s}")
    for key in ("hit_lease_release_us", "hit_peek_us", "miss_us", "grpc_match_release_us"):
        a, b = small[key], index[key]
        print(f"  {key:24s} {a[0]:>8.1f} / {a[1]:<7.1f} {b[0]:>8.1f} / {b[1]:<7.1f} {b[0] / a[0]:>9.2f}x")
    print(f"\n{args.transfer_mib} MiB of KV ({num_blocks} blocks of {layout.block_bytes >> 10} KiB) between two "
          f"processes (GB/s, median of {args.transfer_iters}; "
          f"UCX_NET_DEVICES={os.environ.get('UCX_NET_DEVICES')} UCX_TLS={os.environ.get('UCX_TLS', '(default)')})")
    print(f"  {'':8s} {'grpc (baseline)':>16s} {'nixl':>8s} {'ratio':>7s}")
    for op in ("read", "write"):
        g, n = planes["grpc"][f"{op}_GBps"], planes["nixl"][f"{op}_GBps"]
        print(f"  {op:8s} {g:>16.3f} {n:>8.3f} {n / g:>6.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"index_1k": small, "index": index, "planes": planes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
