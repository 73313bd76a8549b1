"""Flags of ``python -m kvstore``; the only place that parses them and configures logging."""
from __future__ import annotations

import argparse
import logging

from runtime.metric_names import add_metrics_names_arg

DEFAULTS = dict(dtype="float32", block_size=16, num_layers=30, num_kv_heads=3, head_dim=64)  # SmolLM2-135M


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvstore", description="Grove KV block store: a trie-indexed, "
                                "tiered (GPU/CPU/disk) prefix cache over gRPC, with NIXL as its data plane.")
    p.add_argument("--address", default="127.0.0.1:50070", help="host:port to serve gRPC on (port 0: any)")
    p.add_argument("--port-file", help="write the bound port here once serving")
    p.add_argument("--ready-file", help='write {"grpc_port": .., "metrics_port": ..} here as JSON once serving')
    g = p.add_argument_group("block geometry (must match the workers' KV layout)")
    g.add_argument("--dtype", default=DEFAULTS["dtype"], choices=["float32", "bfloat16", "float16"])
    g.add_argument("--block-size", type=int, default=DEFAULTS["block_size"], help="tokens per block")
    g.add_argument("--num-layers", type=int, default=DEFAULTS["num_layers"])
    g.add_argument("--num-kv-heads", type=int, default=DEFAULTS["num_kv_heads"])
    g.add_argument("--head-dim", type=int, default=DEFAULTS["head_dim"])
    t = p.add_argument_group("tiers (capacity: bytes such as 2GiB / 512MB, or blocks such as 4096blocks)")
    t.add_argument("--cpu-capacity", default="1GiB", help="CPU tier (pinned memory when CUDA is present)")
    t.add_argument("--gpu-capacity", default="0", help="GPU tier; 0 = none")
    t.add_argument("--gpu-device", default="cuda", help="device of the GPU tier ('cpu': a stand-in for tests)")
    t.add_argument("--disk-capacity", default="0", help="disk tier below the CPU tier (a memory-mapped file); 0 = none")
    t.add_argument("--disk-path", default="", help="the disk tier's file (made anew at start)")
    p.add_argument("--snapshot", default=None, metavar="PATH",
                   help="keep the cache across restarts: read from PATH at start (if there), written to it at "
                        "shutdown (SIGTERM / SIGINT)")
    p.add_argument("--snapshot-interval", type=float, default=300.0, metavar="SECONDS",
                   help="with --snapshot, also write it this often while serving where the cache changed, so a "
                        "crash loses only what came after the last one (0: at shutdown only)")
    p.add_argument("--lease-ttl", type=float, default=30.0, help="seconds before an unreleased lease expires")
    p.add_argument("--nixl", action=argparse.BooleanOptionalAction, default=True,
                   help="serve the NIXL data plane (--no-nixl: gRPC streams only)")
    p.add_argument("--metrics-port", type=int, default=-1, help="prometheus /metrics port (0: any free one, -1: off)")
    add_metrics_names_arg(p)
    p.add_argument("--grace-period", type=float, default=5.0, help="seconds in-flight RPCs get on SIGTERM")
    p.add_argument("--chunk-bytes", type=int, default=2 << 20, help="fallback stream chunk size (<= 3 MiB)")
    p.add_argument("--check-integrity-on-exit", action="store_true",
                   help="check the store's invariants at shutdown; exit non-zero if broken (tests)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # heavy imports after parsing, so --help stays fast
    import torch
    import uvloop

    from kvstore.config import BlockGeometry, ServerConfig, StoreConfig, TierConfig, parse_capacity
    from kvstore.server import serve

    try:
        geometry = BlockGeometry(args.dtype, args.block_size, args.num_layers, args.num_kv_heads, args.head_dim)
        tiers = []
        gpu_blocks = parse_capacity(args.gpu_capacity, geometry.block_bytes)
        if gpu_blocks:
            if args.gpu_device.startswith("cuda") and not torch.cuda.is_available():
                raise ValueError("--gpu-capacity needs CUDA (or --gpu-device cpu for a stand-in tier)")
            tiers.append(TierConfig("gpu", args.gpu_device, gpu_blocks))
        cpu_blocks = parse_capacity(args.cpu_capacity, geometry.block_bytes)
        if cpu_blocks <= 0:
            raise ValueError(f"--cpu-capacity {args.cpu_capacity} holds no block of {geometry.block_bytes} bytes")
        tiers.append(TierConfig("cpu", "cpu", cpu_blocks, pin_memory=torch.cuda.is_available()))
        disk_blocks = parse_capacity(args.disk_capacity, geometry.block_bytes)
        if disk_blocks:
            if not args.disk_path:
                raise ValueError("--disk-capacity needs --disk-path (the tier's file)")
            tiers.append(TierConfig("disk", "cpu", disk_blocks, path=args.disk_path))
        store_config = StoreConfig(geometry, tuple(tiers), lease_ttl_s=args.lease_ttl)
        server_config = ServerConfig(args.address, args.port_file, args.nixl, args.metrics_port, args.grace_period,
                                     args.chunk_bytes, args.check_integrity_on_exit, args.ready_file, args.snapshot,
                                     args.metrics_names, args.snapshot_interval)
    except ValueError as e:
        parser.error(str(e))  # exits 2 with the usage line
    uvloop.run(serve(store_config, server_config))
    return 0
