"""Fixtures of the kvstore tests: small in-process stores on a manual clock, and generated stubs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ensure_protos() -> None:
    proto = ROOT / "protos/grove/internal/v1/kvstore.proto"
    stub = ROOT / "grove/internal/v1/kvstore_pb2.py"
    if not stub.exists() or stub.stat().st_mtime < proto.stat().st_mtime:
        subprocess.run([sys.executable, str(ROOT / "scripts/gen_protos.py")], check=True)


_ensure_protos()

from kvstore.config import BlockGeometry, StoreConfig, TierConfig  # noqa: E402
from kvstore.store import KVStore  # noqa: E402

# a tiny block: [2 layers, 2, 4 tokens, 1 head, 4 dims] fp32 = 256 bytes
GEOMETRY = BlockGeometry("float32", block_size=4, num_layers=2, num_kv_heads=1, head_dim=4)


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_store(clock: ManualClock) -> Iterator[Callable[..., KVStore]]:
    """make_store(upper=0, cpu=8, ...): no CUDA here, so the upper ("gpu") tier, when asked for, is a
    stand-in on CPU memory: same code path as a CUDA pool, only its device differs."""
    stores: list[KVStore] = []

    def make(upper: int = 0, cpu: int = 8, ttl: float = 30.0, geometry: BlockGeometry = GEOMETRY) -> KVStore:
        tiers = ((TierConfig("gpu", "cpu", upper),) if upper else ()) + (TierConfig("cpu", "cpu", cpu),)
        store = KVStore(StoreConfig(geometry, tiers, lease_ttl_s=ttl), clock=clock)
        stores.append(store)
        return store

    yield make
    for store in stores:  # every scenario ends with the invariants intact
        store.check_integrity()
