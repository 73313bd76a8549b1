"""Writing new K/V into the paged cache by slot mapping, and moving slots (lookahead compaction).

A flat slot is ``block_id * block_size + offset``. The cache views are strided (the pool is
block-major over all layers, see engine.kv_layout), so both kernels take strides.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch import check_device, check_paged_cache, next_pow2


@triton.jit(do_not_specialize=["num_tokens"])  # changes every step
def _kv_write_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, num_tokens,
    stride_kt, stride_kh, stride_kd, stride_vt, stride_vh, stride_vd,
    stride_cb, stride_ct, stride_ch, stride_cd,
    KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, H_PAD: tl.constexpr, D_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """BLOCK_T tokens per program: k[t], v[t] ([KV_HEADS, HEAD_DIM]) -> cache slot slot_mapping[t]."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    slot = tl.load(slot_ptr + t, mask=t < num_tokens, other=-1).to(tl.int64)
    t3 = t.to(tl.int64)[:, None, None]  # [BLOCK_T, 1, 1]
    h = tl.arange(0, H_PAD)[None, :, None]
    d = tl.arange(0, D_PAD)[None, None, :]
    # slot < 0: a padding token (or past the end), nothing to store
    inside = (slot >= 0)[:, None, None] & (h < KV_HEADS) & (d < HEAD_DIM)  # [BLOCK_T, H_PAD, D_PAD]
    dst = ((slot // PAGE_SIZE) * stride_cb + (slot % PAGE_SIZE) * stride_ct)[:, None, None] + h * stride_ch \
        + d * stride_cd
    k = tl.load(k_ptr + t3 * stride_kt + h * stride_kh + d * stride_kd, mask=inside)
    v = tl.load(v_ptr + t3 * stride_vt + h * stride_vh + d * stride_vd, mask=inside)
    tl.store(k_cache_ptr + dst, k, mask=inside)
    tl.store(v_cache_ptr + dst, v, mask=inside)


@triton.jit(do_not_specialize=["num_slots"])
def _copy_slots_kernel(
    pool_ptr, src_ptr, dst_ptr, num_slots,
    stride_b, stride_l, stride_kv, stride_t, stride_h, stride_d,
    KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, H_PAD: tl.constexpr, D_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
):
    """One program per (layer, k|v) plane; it copies the slots *in order*, so compaction with
    dst[i] <= src[i], both increasing, never reads a slot after overwriting it: slot src[j] is only
    ever written as some dst[i] with i > j. Each element is loaded and stored by the same thread."""
    plane = tl.program_id(0)
    base = pool_ptr + (plane // 2).to(tl.int64) * stride_l + (plane % 2) * stride_kv
    h = tl.arange(0, H_PAD)[:, None]
    d = tl.arange(0, D_PAD)[None, :]
    inside = (h < KV_HEADS) & (d < HEAD_DIM)  # [H_PAD, D_PAD]
    within = h * stride_h + d * stride_d
    for i in range(num_slots):
        src = tl.load(src_ptr + i).to(tl.int64)
        dst = tl.load(dst_ptr + i).to(tl.int64)
        x = tl.load(base + (src // PAGE_SIZE) * stride_b + (src % PAGE_SIZE) * stride_t + within, mask=inside)
        tl.store(base + (dst // PAGE_SIZE) * stride_b + (dst % PAGE_SIZE) * stride_t + within, x, mask=inside)


def write_kv(
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D], strided
    v_cache: torch.Tensor,
    k: torch.Tensor,  # [T, KVH, D]
    v: torch.Tensor,
    slot_mapping: torch.Tensor,  # [T] int; negative: skip
) -> None:
    check_paged_cache(k_cache, v_cache)
    _, page_size, kvh, d = k_cache.shape
    T = k.shape[0]
    if k.shape != (T, kvh, d) or v.shape != k.shape:
        raise ValueError(f"k/v must be [T, {kvh}, {d}], got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.dtype != k_cache.dtype or v.dtype != k_cache.dtype or k.device != k_cache.device:
        raise ValueError(f"k/v must be {k_cache.dtype} on {k_cache.device}, got {k.dtype} on {k.device}")
    if slot_mapping.shape != (T,) or slot_mapping.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"slot_mapping must be [T] int, got {slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    check_device(k_cache.device, slot_mapping=slot_mapping)
    if T == 0:
        return
    h_pad, d_pad = next_pow2(kvh), next_pow2(d)
    block_t = max(1, min(16, next_pow2(T), 4096 // (h_pad * d_pad)))  # at most 4096 elements per tile
    _kv_write_kernel[(triton.cdiv(T, block_t),)](
        k, v, k_cache, v_cache, slot_mapping, T,
        *k.stride(), *v.stride(), *k_cache.stride(),
        KV_HEADS=kvh, HEAD_DIM=d, H_PAD=h_pad, D_PAD=d_pad, PAGE_SIZE=page_size, BLOCK_T=block_t,
    )


def copy_slots(pool: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
    """pool: [num_blocks, num_layers, 2, block_size, KVH, D]; copy every layer's K/V of slot src[i]
    to slot dst[i], in order (safe for the compaction overlap, see ``_copy_slots_kernel``)."""
    if pool.dim() != 6 or pool.shape[2] != 2:
        raise ValueError(f"pool must be [num_blocks, num_layers, 2, block_size, kv_heads, head_dim], "
                         f"got {tuple(pool.shape)}")
    if src.shape != dst.shape or src.dim() != 1 or src.dtype not in (torch.int32, torch.int64) \
            or dst.dtype != src.dtype:
        raise ValueError(f"src/dst must be [N] int of one dtype, got {src.dtype} {tuple(src.shape)} and "
                         f"{dst.dtype} {tuple(dst.shape)}")
    check_device(pool.device, src=src, dst=dst)
    _, layers, _, page_size, kvh, d = pool.shape
    if src.shape[0] == 0:
        return
    _copy_slots_kernel[(layers * 2,)](
        pool, src, dst, src.shape[0], pool.stride(0), pool.stride(1), pool.stride(2), pool.stride(3),
        pool.stride(4), pool.stride(5),
        KV_HEADS=kvh, HEAD_DIM=d, H_PAD=next_pow2(kvh), D_PAD=next_pow2(d), PAGE_SIZE=page_size,
    )


def write_kv_ref(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    page = k_cache.shape[1]
    k_cache[slots // page, slots % page] = k[keep]
    v_cache[slots // page, slots % page] = v[keep]


def copy_slots_ref(pool: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
    """One slot at a time, in order: the semantics for overlapping compaction."""
    page = pool.shape[3]
    for s, t in zip(src.tolist(), dst.tolist()):
        pool[t // page, :, :, t % page] = pool[s // page, :, :, s % page]
