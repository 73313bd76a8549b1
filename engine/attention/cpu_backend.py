"""The CPU serving path: attention by Grove's C++ kernel (``kernels.cpu_attention``).

The kernel reads the paged pool in place and attends every sequence of the step in one call, with
no padding and so no grouping, in fp32 and row-invariant by construction: the exactness that the
torch backend buys for 16-bit models with an fp64 pass. Writing K/V and compacting slots are the
torch backend's. A sliding window (Mistral) is the kernel's too: a step it cuts passes the
positions and the window. The rotary embedding and the K/V writes of a bf16 model run in one
kernel call a layer (``kernels.cpu_rope``, bit for bit the torch ops it replaces: 1.4 against 8 ms
a step of 48 tokens over SmolLM2's 30 layers).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention.base import KVLayerCache, rope_then_write_kv
from engine.attention.torch_backend import TorchAttentionBackend
from engine.batch import AttentionMetadata
from kernels import cpu_attention, cpu_rope


@dataclass(frozen=True, slots=True)
class CpuKernelPlan:
    write_block: torch.Tensor  # [T] block id of each new token's slot
    write_offset: torch.Tensor  # [T] offset inside the block
    query: cpu_attention.PagedQuery


class CpuAttentionBackend(TorchAttentionBackend):
    name = "cpu"
    pads_groups = False  # one kernel call attends every sequence of the step, unpadded

    def __init__(self) -> None:
        super().__init__()
        self._checked: set[tuple[int, torch.dtype]] = set()  # caches whose layout was checked
        self._rope_kernel: dict[tuple[int, torch.dtype], bool] = {}  # cache -> whether cpu_rope takes it

    @staticmethod
    def available() -> bool:
        return cpu_attention.available()

    def plan(self, meta: AttentionMetadata) -> CpuKernelPlan:
        bs = meta.block_size
        window = meta.sliding_window if meta.window_applies else None
        return CpuKernelPlan(meta.slot_mapping // bs, meta.slot_mapping % bs,
                             cpu_attention.PagedQuery.build(meta.block_tables, meta.query_start, meta.num_cached,
                                                            meta.tree_mask, meta.positions, window))

    def rope_write_kv(self, qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor,  # type: ignore[override]
                      cache: KVLayerCache, plan: CpuKernelPlan, num_heads: int) -> torch.Tensor:
        key = (cache.k.data_ptr(), qkv.dtype)
        fused = self._rope_kernel.get(key)
        if fused is None:  # a layer's cache keeps its layout: checked once each
            fused = self._rope_kernel[key] = cpu_rope.supports(qkv, cache.k)
            if fused:
                cpu_rope.check_layout(qkv, cache.k, cache.v, num_heads)
        if not fused:
            return rope_then_write_kv(self, qkv, cos, signed_sin, cache, plan, num_heads)
        cpu_rope.rope_write_kv(qkv, cos, signed_sin, cache.k, cache.v, plan.write_block, plan.write_offset, num_heads)
        return qkv[:, :num_heads]

    def attend(self, q: torch.Tensor, cache: KVLayerCache, plan: CpuKernelPlan, scale: float) -> torch.Tensor:  # type: ignore[override]
        key = (cache.k.data_ptr(), q.dtype)
        if key not in self._checked:  # the pool's layers keep their layout: checked once each
            cpu_attention.check_cache(q, cache.k, cache.v)
            self._checked.add(key)
        return cpu_attention.run(q, cache.k, cache.v, plan.query, scale)
