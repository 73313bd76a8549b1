"""Frozen configuration of the KV store: block geometry, tiers and server flags."""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.kv_layout import BlockGeometry

TIER_NAMES = ("gpu", "cpu", "disk")  # top tier first; eviction moves blocks down this list


@dataclass(frozen=True, slots=True)
class TierConfig:
    name: str  # "gpu" | "cpu" | "disk": the role; device says where its memory is
    device: str  # "cuda", "cuda:1", "cpu"; a "gpu" tier on "cpu" is a stand-in (tests, no CUDA)
    capacity_blocks: int
    pin_memory: bool = False  # page-locked host memory (only with CUDA present)
    path: str = ""  # the "disk" tier's file (memory-mapped: the OS pages blocks in and out)

    def __post_init__(self) -> None:
        if self.name not in TIER_NAMES:
            raise ValueError(f"tier name {self.name!r} is not one of {TIER_NAMES}")
        if self.capacity_blocks <= 0:
            raise ValueError(f"tier {self.name}: capacity must be positive, got {self.capacity_blocks}")
        if (self.name == "disk") != bool(self.path):
            raise ValueError("the disk tier, and only it, needs a file (--disk-path)")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    geometry: BlockGeometry
    tiers: tuple[TierConfig, ...]  # top first: ("gpu", "cpu", "disk"), any of them but cpu left out
    lease_ttl_s: float = 30.0

    def __post_init__(self) -> None:
        names = [t.name for t in self.tiers]
        if not names or names != [n for n in TIER_NAMES if n in names]:
            raise ValueError(f"tiers must be a non-empty, ordered subset of {TIER_NAMES}, got {names}")
        if self.lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be positive, got {self.lease_ttl_s}")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    address: str = "127.0.0.1:50070"
    port_file: str | None = None  # written (atomically) with the bound port once serving
    use_nixl: bool = True
    metrics_port: int = -1  # -1: no metrics endpoint; 0: any free port
    grace_s: float = 5.0  # in-flight RPCs get this long after SIGTERM
    max_chunk_bytes: int = 2 << 20  # fallback data chunks, under gRPC's 4 MiB message limit
    check_integrity_on_exit: bool = False  # tests: prove the store's invariants at shutdown
    ready_file: str | None = None  # JSON {"grpc_port", "metrics_port"}, like the other services' ready files
    snapshot: str | None = None  # the cache kept across restarts: read at start, written at shutdown (kvstore.snapshot)
    metrics_names: str = "grove"  # /metrics under Grove's names, vLLM's or both (runtime.metric_names)
    snapshot_interval_s: float = 0.0  # with a snapshot: also written this often while serving if changed; 0: not

    def __post_init__(self) -> None:
        if not 0 < self.max_chunk_bytes <= 3 << 20:
            raise ValueError(f"max_chunk_bytes must be in (0, 3 MiB], got {self.max_chunk_bytes}")
        if self.snapshot_interval_s < 0:
            raise ValueError(f"the snapshot interval must be >= 0 seconds, got {self.snapshot_interval_s}")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_CAPACITY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_capacity(text: str, block_bytes: int) -> int:
    """Capacity flag -> blocks: "4096blocks" counts blocks, "2GiB" / "500MB" / "1048576" are bytes."""
    m = _CAPACITY_RE.match(text)
    if not m:
        raise ValueError(f"capacity {text!r}: expected a number with a unit (e.g. 2GiB, 512MB, 4096blocks)")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit in ("block", "blocks"):
        return int(value)
    if unit not in _UNITS:
        raise ValueError(f"capacity {text!r}: unknown unit {m.group(2)!r} (B, KiB, MiB, GiB, KB, MB, GB, blocks)")
    return int(value * _UNITS[unit]) // block_bytes
