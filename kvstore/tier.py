"""One tier of the store: a pool of blocks on one device plus the allocator of its rows.

    pool:       [capacity_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]  (geometry dtype)
    pool_bytes: [capacity_blocks, block_bytes] uint8 view of the same memory (data planes move bytes)

The allocator's reference count of a row is the number of owners: the trie node or the write
lease that holds it, plus one per lease or in-flight stream that pins it.
"""
from __future__ import annotations

import logging

import torch

from engine.block_allocator import BlockAllocator
from engine.kv_layout import BlockGeometry
from kvstore.config import TierConfig

logger = logging.getLogger(__name__)


class Tier:
    def __init__(self, config: TierConfig, geometry: BlockGeometry) -> None:
        self.config = config
        self.name = config.name
        self.device = torch.device(config.device)
        pin = config.pin_memory and self.device.type == "cpu" and torch.cuda.is_available()
        if config.path:  # a file mapped into memory: blocks live on disk, the OS caches the hot ones
            self.pool = _file_pool(config.path, config.capacity_blocks, geometry)
        else:
            self.pool = torch.zeros(
                (config.capacity_blocks, *geometry.block_shape), dtype=geometry.torch_dtype,
                device=self.device, pin_memory=pin,
            )
        self.pool_bytes = self.pool.view(torch.uint8).view(config.capacity_blocks, geometry.block_bytes)
        self.allocator = BlockAllocator(config.capacity_blocks)
        self.demoted = 0  # blocks moved down to the next tier
        self.dropped = 0  # blocks evicted out of the store
        if self.name == "gpu" and self.device.type != "cuda":
            logger.warning("tier 'gpu' stands in on %s memory (no CUDA): demotion logic only", self.device)

    @property
    def capacity(self) -> int:
        return self.allocator.num_blocks

    def block_bytes_view(self, block: int) -> torch.Tensor:
        """[block_bytes] uint8 view of one row (no copy)."""
        return self.pool_bytes[block]

    def copy_block_to(self, block: int, other: "Tier", other_block: int) -> None:
        other.pool_bytes[other_block].copy_(self.pool_bytes[block])

    def __repr__(self) -> str:
        return f"Tier({self.name}, {self.device}, {self.allocator.num_used}/{self.capacity} used)"


def _file_pool(path: str, capacity: int, geometry: BlockGeometry) -> torch.Tensor:
    """[capacity, *block_shape] backed by ``path`` (made anew, sparse: disk is used as blocks are
    written; what an earlier store left there is not read, a snapshot is: kvstore.snapshot)."""
    numel = capacity * geometry.block_bytes // geometry.torch_dtype.itemsize
    with open(path, "wb") as f:
        f.truncate(capacity * geometry.block_bytes)
    pool = torch.from_file(path, shared=True, size=numel, dtype=geometry.torch_dtype)
    logger.info("disk tier: %d blocks (%.1f GiB) in %s", capacity, capacity * geometry.block_bytes / 2**30, path)
    return pool.view(capacity, *geometry.block_shape)
