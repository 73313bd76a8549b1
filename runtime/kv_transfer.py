"""Moving a request's KV blocks between workers: NIXL READ, or gRPC ReadKV bytes as the fallback.

The holder (prefill worker) registers its engine pool; the reader (decode worker) registers its own
and pulls the holder's blocks into freshly allocated local blocks.
"""
from __future__ import annotations

import logging
import torch

from engine.request import KVHandle
from kvstore.nixl_plane import NixlPlane, RemotePool

logger = logging.getLogger(__name__)

POOL_NAME = "engine-kv"


def make_plane(role: str, pool: torch.Tensor, enabled: bool, passive: bool) -> NixlPlane | None:
    """A NIXL agent with the engine pool registered, or None when NIXL is off or unavailable.

    ``passive``: peers READ from this pool (the holder), which needs UCX's progress thread. A reader
    that only initiates transfers runs without it: the thread would wake every 100 us and steal the
    decode step's cores.
    """
    if not enabled:
        return None
    try:
        plane = NixlPlane(name_prefix=f"grove-{role}", progress_thread=passive)
    except Exception as exc:  # native library missing or UCX failing: degrade to the gRPC path
        logger.warning("NIXL unavailable (%s): KV moves over gRPC", exc)
        return None
    plane.register_pool(POOL_NAME, pool)
    return plane


def remote_pool(h: KVHandle) -> RemotePool:
    return RemotePool(h.nixl_agent, h.pool_name, h.base_addr, h.block_bytes, h.num_blocks, h.mem_type, h.device_id)


def write_block_bytes(pool: torch.Tensor, block_id: int, offset: int, data: bytes) -> None:
    """Copies ``data`` into local block ``block_id`` at byte ``offset`` (gRPC fallback path)."""
    flat = pool[block_id].view(-1).view(torch.uint8)
    flat[offset : offset + len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)


def read_block_bytes(pool: torch.Tensor, block_id: int) -> memoryview:
    """Local block ``block_id``'s bytes (copied to the host from a GPU pool: numpy reads host memory only)."""
    return memoryview(pool[block_id].contiguous().view(-1).view(torch.uint8).cpu().numpy())


class TransferTimer:
    """Bytes moved and seconds spent on one data plane (exported as metrics)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.seconds = 0.0

    def add(self, nbytes: int, seconds: float) -> None:
        self.bytes += nbytes
        self.seconds += seconds
