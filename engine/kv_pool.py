"""The paged KV tensors of one process: a block pool in the shared layout (engine.kv_layout).

    data: [num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]

Storage only: which block belongs to whom is the allocator's business (engine.block_allocator).
"""
from __future__ import annotations

import torch

from engine.attention.base import KVLayerCache
from engine.kv_layout import KVLayout


class KVPool:
    def __init__(self, layout: KVLayout, num_blocks: int, device: torch.device | str = "cpu") -> None:
        self.layout = layout
        self.num_blocks = num_blocks
        self.data = torch.zeros((num_blocks, *layout.block_shape), dtype=layout.torch_dtype, device=device)
        # strided per-layer views, built once: k/v [num_blocks, block_size, kv_heads, head_dim]
        self.layers = [KVLayerCache(self.data[:, i, 0], self.data[:, i, 1]) for i in range(layout.num_layers)]

    @property
    def block_size(self) -> int:
        return self.layout.block_size

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def block_bytes_view(self) -> torch.Tensor:
        """[num_blocks, block_bytes] uint8 view, for byte-level data planes."""
        return self.data.view(self.num_blocks, -1).view(torch.uint8)

    @staticmethod
    def blocks_for_bytes(layout: KVLayout, nbytes: int) -> int:
        return max(1, nbytes // layout.block_bytes)
