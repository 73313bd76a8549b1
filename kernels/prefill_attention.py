"""Variable-length causal prefill attention over a paged cache that may already hold a prefix.

A prefill chunk of a sequence attends to its cached prefix (logical KV 0 .. num_cached-1, all
visible) and causally to itself (num_cached + j for j <= its own index); its K/V were written into
the cache before attention, so both parts are read from the paged cache. A tree mask, when given,
replaces the causal rule for the new part (so a tree longer than the decode kernel takes still works).

Programs are (query tile, KV head); a tile is TOKENS consecutive query tokens of one sequence × the
query heads of the KV head, listed on the host once per step in a tile table (``prefill_tiles``).
Each tile stops reading KV after its own last token (causal early exit).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.attention_tile import _attend_paged, _load_rows, _store_rows
from kernels.launch import check_device, check_paged_cache, dot_precision, interpreting, next_pow2, upcast, use_autotune

_LOG2E = 1.4426950408889634
_INTERPRET_BLOCK_N = 128  # the fixed config off CUDA: few, large tiles suit the interpreter
# fp32 on CUDA: one fixed config, not autotuned. Exact fp32 dots ("ieee") compile without tensor
# cores, 5-10x slower than 16-bit ones (2-22 s a config for sm_90 on a 2-core CPU): most likely why an
# H200's first fp32 decode did not finish in 200 s (not confirmed there).
_FP32_BLOCK_N = 64


class PrefillTiles(NamedTuple):
    table: torch.Tensor  # [num_tiles, 2] int32: (sequence, first query token of the tile)
    tokens_per_tile: int


@triton.jit(do_not_specialize=["stride_bt", "stride_mt"])  # widths that change every step
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, tiles_ptr, query_start_ptr, num_cached_ptr, table_ptr, mask_ptr,
    qk_scale,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_bt, stride_mt,
    GROUP: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_TREE: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    tl.static_assert(BLOCK_M % G_PAD == 0, "a tile holds whole query tokens")
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and HEAD_DIM >= 16, "tl.dot needs >= 16 on GPUs")
    TOKENS: tl.constexpr = BLOCK_M // G_PAD
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.load(tiles_ptr + 2 * tile)
    first_tok = tl.load(tiles_ptr + 2 * tile + 1)
    q_first = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_first
    num_cached = tl.load(num_cached_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    row_tok = first_tok + rows // G_PAD  # [BLOCK_M]
    row_in_group = rows % G_PAD
    row_valid = (row_tok < q_len) & (row_in_group < GROUP)
    row_head = kv_head * GROUP + row_in_group
    q = _load_rows(q_ptr, q_first, row_tok, row_head, row_valid, stride_qt, stride_qh, HEAD_DIM, UPCAST)

    kv_hi = num_cached + tl.minimum(q_len, first_tok + TOKENS)  # causal early exit
    acc, m_i, l_i = _attend_paged(
        q, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh, table_ptr + seq.to(tl.int64) * stride_bt,
        mask_ptr + (q_first + row_tok).to(tl.int64) * stride_mt, mask_ptr, row_tok, row_valid,
        0, kv_hi, num_cached, qk_scale, stride_kb, stride_kt,
        BLOCK_M, HEAD_DIM, PAGE_SIZE, BLOCK_N, HAS_TREE, UPCAST, DOT_PRECISION, False,
    )
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # every valid row sees at least itself
    _store_rows(out_ptr, out, q_first, row_tok, row_head, row_valid, stride_ot, stride_oh, HEAD_DIM)


@functools.cache
def _tuned_prefill_kernel() -> triton.runtime.Autotuner:
    configs = [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bn, w, s in [(32, 4, 2), (64, 4, 3), (64, 8, 3), (128, 8, 2), (64, 8, 4)]
    ]
    return triton.autotune(configs=configs, key=["HEAD_DIM", "GROUP", "BLOCK_M"])(_prefill_kernel)


def prefill_block_m(group: int) -> int:
    """Rows per program: 128 (BLOCK_N is autotuned on CUDA), at least one token's group of heads."""
    return max(128, next_pow2(group))


def prefill_tiles(query_lens: Sequence[int], seq_ids: Sequence[int], group: int,
                  device: torch.device) -> PrefillTiles:
    """Host-side tile table for the sequences ``seq_ids`` (query_lens indexed by sequence)."""
    tokens = prefill_block_m(group) // next_pow2(group)
    rows = [(s, t) for s in seq_ids for t in range(0, query_lens[s], tokens)]
    table = torch.tensor(rows, dtype=torch.int32).reshape(-1, 2).to(device)
    return PrefillTiles(table, tokens)


def prefill_attention(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D], strided
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int
    query_start: torch.Tensor,  # [B + 1] int
    num_cached: torch.Tensor,  # [B] int
    scale: float,
    *,
    tiles: PrefillTiles,  # from prefill_tiles(...) for the sequences to attend
    tree_mask: torch.Tensor | None = None,  # [T, max_q] bool; None: causal
    out: torch.Tensor | None = None,  # [T, H, D]; rows of other sequences are left untouched
    block_n: int | None = None,  # KV tile off CUDA (tests); CUDA autotunes it
) -> torch.Tensor:
    T, H, D = q.shape
    _, page_size, kvh, d_cache = k_cache.shape
    check_paged_cache(k_cache, v_cache)
    if d_cache != D or H % kvh or D < 16 or D & (D - 1):
        raise ValueError(f"q {tuple(q.shape)} vs cache {tuple(k_cache.shape)}: need equal power-of-two head_dim "
                         f">= 16 and heads a multiple of kv heads")
    if q.dtype != k_cache.dtype or q.stride(2) != 1:
        raise ValueError(f"q must be {k_cache.dtype} with a contiguous head_dim, got {q.dtype} {q.stride()}")
    if tree_mask is not None and (tree_mask.dtype != torch.bool or tree_mask.stride(1) != 1
                                  or tree_mask.shape[0] != T):
        raise ValueError(f"tree_mask must be a row-contiguous bool [T, max_q], got {tree_mask.dtype} "
                         f"{tuple(tree_mask.shape)}")
    check_device(q.device, k_cache=k_cache, block_tables=block_tables, query_start=query_start,
                 num_cached=num_cached, tree_mask=tree_mask, tiles=tiles.table, out=out)
    group = H // kvh
    g_pad = next_pow2(group)
    block_m = prefill_block_m(group)
    if tiles.tokens_per_tile != block_m // g_pad or tiles.table.dtype != torch.int32:
        raise ValueError(f"tile table built for {tiles.tokens_per_tile} tokens per tile, kernel takes "
                         f"{block_m // g_pad}: build it with prefill_tiles(..., group={group})")
    if out is None:
        out = torch.empty_like(q)
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(2) != 1:
        raise ValueError(f"out must be like q {tuple(q.shape)}, got {tuple(out.shape)} {out.dtype}")
    if tiles.table.shape[0] == 0:
        return out
    mask = tree_mask if tree_mask is not None else q  # never read without a tree
    args = (
        q, k_cache, v_cache, out, tiles.table, query_start, num_cached, block_tables, mask, scale * _LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0), mask.stride(0),
    )
    meta = dict(GROUP=group, G_PAD=g_pad, HEAD_DIM=D, PAGE_SIZE=page_size, BLOCK_M=block_m,
                HAS_TREE=tree_mask is not None, UPCAST=upcast(q.dtype), DOT_PRECISION=dot_precision(q.dtype))
    grid = (tiles.table.shape[0], kvh)
    if use_autotune(q.device) and block_n is None and q.dtype != torch.float32:
        _tuned_prefill_kernel()[grid](*args, **meta)
    else:
        fixed = _INTERPRET_BLOCK_N if interpreting() else _FP32_BLOCK_N
        _prefill_kernel[grid](*args, **meta, BLOCK_N=block_n or fixed, num_warps=4)
    return out


def prefill_attention_ref(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks]
    query_start: torch.Tensor,  # [B + 1]
    num_cached: torch.Tensor,  # [B]
    scale: float,
) -> torch.Tensor:
    """Causal attention with a cached prefix, per sequence, through torch's SDPA in fp32."""
    T, H, D = q.shape
    page, kvh = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros(T, H, D, dtype=torch.float32, device=q.device)
    for b in range(block_tables.shape[0]):
        first, last = int(query_start[b]), int(query_start[b + 1])
        cached, n = int(num_cached[b]), last - first
        pos = torch.arange(cached + n, device=q.device)
        blocks, offsets = block_tables[b, pos // page], pos % page
        k = k_cache[blocks, offsets].float().transpose(0, 1)  # [KVH, L, D]
        v = v_cache[blocks, offsets].float().transpose(0, 1)
        # query i (at position cached + i) sees keys 0 .. cached + i
        visible = pos[None, :] <= cached + torch.arange(n, device=q.device)[:, None]  # [n, L]
        o = F.scaled_dot_product_attention(q[first:last].float().transpose(0, 1), k, v, attn_mask=visible,
                                           scale=scale, enable_gqa=H != kvh)
        out[first:last] = o.transpose(0, 1)
    return out.to(q.dtype)
