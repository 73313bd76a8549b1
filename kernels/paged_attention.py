"""Decode / lookahead-verify attention over the paged KV cache (TurboAttention's tree queries).

Per sequence, its n new query tokens (1 for decode, up to MAX_VERIFY_QUERY for a lookahead tree) ×
the query heads of one KV head form one matrix of BLOCK_M rows, so verifying n tokens reads the
sequence's K/V once, like decoding one. K/V of the new tokens are already in the cache (the backend
writes them first); the tree mask decides which of them each query sees.

Long contexts with too few programs to fill the GPU are split along KV (flash-decoding): each split
writes a normalized partial output and its log-sum-exp, and ``_split_reduce_kernel`` merges them.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels.attention_tile import _attend_paged, _load_rows, _store_rows
from kernels.launch import check_device, check_paged_cache, dot_precision, next_pow2, sm_count, upcast, use_autotune

MAX_VERIFY_QUERY = 64  # longer queries go to the prefill kernel (except in the row-invariant mode)
_LOG2E = 1.4426950408889634
_INTERPRET_BLOCK_N = 128  # the fixed config off CUDA: few, large tiles suit the interpreter
_MIN_SPLIT_LEN = 512  # tokens: below this a split costs more in the reduction than it wins
_MAX_SPLITS = 32
# Row-invariant mode (every call on a GPU: lookahead's exactness needs a row's bits not to depend
# on the step): one program per query token, which attends its path (the cache, then its ancestors
# and itself, in plain decoding's order: kernels.attention_tile), so a tree's node computes what the
# same token decoded alone computes, on the same data at the same tile columns, in the same rows of
# one compiled kernel (chain or tree alike). One tile shape and warp count for every call, and a
# context split at multiples of a fixed length, so its splits follow its own path's length, not the
# batch's. A single split merged by _split_reduce_kernel keeps its bits (weights 2^0 = 1 and 0), so a
# sequence whose context fits one split gets the same bits whether or not others in the launch are
# split. On an H200 (2026-12-04) the earlier form of this mode, a tree's tokens as rows of one
# 64-row tile under the tree mask, gave a depth-1 node an output 1 ulp off plain decoding in one
# element of one layer, enough to change greedy output. It compiles 2 variants (split or not) where
# autotuning compiled 7 configs for each query tile height and tree or not: in fp32, whose exact dots
# compile 5-10x slower, that is most likely why an H200's first decode did not finish in 200 s.
_INVARIANT_BLOCK_M = 16  # rows: one token's query heads (more where a KV head has more than 16)
_INVARIANT_BLOCK_N = 64
_INVARIANT_SPLIT_LEN = 1024
_INVARIANT_WARPS = 4


# Integer arguments that change from step to step (the block table's and tree mask's widths, the
# query tiles of the longest sequence) are not specialized: Triton would compile a variant for each
# value class (== 1, multiple of 16, other) of each, and a serving engine meets them all at run time.
@triton.jit(do_not_specialize=["q_tiles", "stride_bt", "stride_mt", "stride_pt"])
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    seq_ids_ptr, query_start_ptr, num_cached_ptr, table_ptr, mask_ptr, path_ptr, depth_ptr,
    qk_scale, split_len, q_tiles,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_bt, stride_mt, stride_pt,
    stride_ps, stride_pp,  # part_out [S, tiles, TOKENS * G_PAD, HEAD_DIM], part_lse [S, tiles, TOKENS * G_PAD]
    stride_ls, stride_lp,
    GROUP: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_TREE: tl.constexpr, SPLIT: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    TOKENS: tl.constexpr, PATHS: tl.constexpr,
):
    """TOKENS query tokens per program (BLOCK_M // G_PAD, or 1 with PATHS: each token attends its
    path, see kernels.attention_tile; path_ptr [T, >= depth + 1] and depth_ptr [T] then say it)."""
    tl.static_assert(BLOCK_M % G_PAD == 0 and TOKENS * G_PAD <= BLOCK_M, "a tile holds whole query tokens")
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and HEAD_DIM >= 16, "tl.dot needs >= 16 on GPUs")
    pid_hq = tl.program_id(0)  # kv_head * q_tiles + query tile (axis 0: a long chunk has many tiles)
    pid_seq = tl.program_id(1)
    split = tl.program_id(2)
    kv_head = pid_hq // q_tiles
    q_tile = pid_hq % q_tiles
    seq = tl.load(seq_ids_ptr + pid_seq)
    q_first = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_first
    if q_tile * TOKENS >= q_len:
        return  # this sequence has fewer tokens than the longest one
    num_cached = tl.load(num_cached_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    row_tok = q_tile * TOKENS + rows // G_PAD  # [BLOCK_M]
    row_in_group = rows % G_PAD
    row_valid = (rows // G_PAD < TOKENS) & (row_tok < q_len) & (row_in_group < GROUP)
    row_head = kv_head * GROUP + row_in_group
    q = _load_rows(q_ptr, q_first, row_tok, row_head, row_valid, stride_qt, stride_qh, HEAD_DIM, UPCAST)

    if PATHS:  # the token's path: the cache, then its ancestors and itself, depth + 1 of them
        kv_hi = num_cached + tl.load(depth_ptr + q_first + q_tile) + 1
    else:  # causal bound: no token of this tile sees a new token after the tile's last one
        kv_hi = num_cached + tl.minimum(q_len, (q_tile + 1) * TOKENS)
    kv_lo = split * split_len
    # every split but the last stops at its end; the last runs on, whatever max_seq_len said
    kv_hi = tl.where(split < tl.num_programs(2) - 1, tl.minimum(kv_hi, kv_lo + split_len), kv_hi)
    acc, m_i, l_i = _attend_paged(
        q, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh, table_ptr + seq.to(tl.int64) * stride_bt,
        mask_ptr + (q_first + row_tok).to(tl.int64) * stride_mt,
        path_ptr + (q_first + q_tile).to(tl.int64) * stride_pt, row_tok, row_valid,
        kv_lo, kv_hi, num_cached, qk_scale, stride_kb, stride_kt,
        BLOCK_M, HEAD_DIM, PAGE_SIZE, BLOCK_N, HAS_TREE, UPCAST, DOT_PRECISION, PATHS,
    )
    seen = l_i > 0.0  # a split may hold nothing a row can see
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    if SPLIT:
        tile = pid_seq * tl.num_programs(0) + pid_hq
        lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        part = part_out_ptr + split.to(tl.int64) * stride_ps + tile.to(tl.int64) * stride_pp
        tl.store(part + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], out, mask=row_valid[:, None])
        tl.store(part_lse_ptr + split * stride_ls + tile * stride_lp + rows, lse, mask=row_valid)
    else:
        _store_rows(out_ptr, out, q_first, row_tok, row_head, row_valid, stride_ot, stride_oh, HEAD_DIM)


@triton.jit(do_not_specialize=["q_tiles"])
def _split_reduce_kernel(
    out_ptr, part_out_ptr, part_lse_ptr, seq_ids_ptr, query_start_ptr, num_splits, q_tiles,
    stride_ot, stride_oh, stride_ps, stride_pp, stride_ls, stride_lp,
    GROUP: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, TOKENS: tl.constexpr,
):
    """Merge the splits of one decode tile: out = sum_s 2^(lse_s - lse) * out_s."""
    pid_hq = tl.program_id(0)
    pid_seq = tl.program_id(1)
    kv_head = pid_hq // q_tiles
    q_tile = pid_hq % q_tiles
    seq = tl.load(seq_ids_ptr + pid_seq)
    q_first = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_first
    if q_tile * TOKENS >= q_len:
        return
    rows = tl.arange(0, BLOCK_M)
    row_tok = q_tile * TOKENS + rows // G_PAD
    row_in_group = rows % G_PAD
    row_valid = (rows // G_PAD < TOKENS) & (row_tok < q_len) & (row_in_group < GROUP)
    tile = pid_seq * tl.num_programs(0) + pid_hq
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    w_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    tile_out = part_out_ptr + tile.to(tl.int64) * stride_pp + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    tile_lse = part_lse_ptr + tile * stride_lp + rows
    for s in range(num_splits):
        lse = tl.load(tile_lse + s * stride_ls, mask=row_valid, other=float("-inf"))
        o = tl.load(tile_out + s * stride_ps, mask=row_valid[:, None], other=0.0)
        m_new = tl.maximum(m, lse)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_safe)
        w = tl.exp2(lse - m_safe)
        acc = acc * alpha[:, None] + o * w[:, None]
        w_sum = w_sum * alpha + w
        m = m_new
    out = acc / tl.where(w_sum > 0.0, w_sum, 1.0)[:, None]
    _store_rows(out_ptr, out, q_first, row_tok, kv_head * GROUP + row_in_group, row_valid, stride_ot, stride_oh,
                HEAD_DIM)


@functools.cache
def _tuned_decode_kernel() -> triton.runtime.Autotuner:
    configs = [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bn, w, s in [(32, 4, 2), (64, 4, 2), (64, 4, 3), (64, 8, 3), (128, 4, 2), (128, 8, 3), (32, 4, 4)]
    ]
    return triton.autotune(configs=configs, key=["HEAD_DIM", "GROUP", "BLOCK_M", "SPLIT"])(_paged_decode_kernel)


def choose_num_splits(num_programs: int, max_kv_len: int, num_sms: int) -> int:
    """Flash-decoding heuristic: split KV only while programs are too few to fill the GPU (~2 waves)
    and each split keeps at least _MIN_SPLIT_LEN tokens."""
    if num_programs >= num_sms or max_kv_len < 2 * _MIN_SPLIT_LEN:
        return 1
    want = -(-2 * num_sms // num_programs)
    return max(1, min(want, max_kv_len // _MIN_SPLIT_LEN, _MAX_SPLITS))


def decode_block_m(max_query_len: int, group: int) -> int:
    """Rows per program: all (token, head) rows of a sequence's KV head if they fit in 64."""
    g_pad = next_pow2(group)
    return max(16, g_pad, min(64, next_pow2(max_query_len * g_pad)))


def token_paths(query_start: torch.Tensor, tree_mask: torch.Tensor | None, num_tokens: int,
                width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each new token's path for the row-invariant mode, from the step's metadata (device ops, no
    sync): ([T, width] int32, a token's ancestors and itself as new-token indices by depth; [T]
    int32 depths). A chain's token t has path 0..t (one arange row, broadcast); a tree's node its
    mask row's set indices in order, which is depth order since a parent precedes its child
    (engine.batch.tree_depths). Rows of sequences longer than ``width`` are not meaningful."""
    device = query_start.device
    steps = torch.arange(width, dtype=torch.int32, device=device)
    if tree_mask is None:
        q_lens = query_start[1:] - query_start[:-1]
        seq = torch.repeat_interleave(torch.arange(q_lens.shape[0], device=device), q_lens, output_size=num_tokens)
        depth = (torch.arange(num_tokens, device=device) - query_start[seq]).to(torch.int32)
        return steps.expand(num_tokens, width), depth
    on_path = tree_mask[:, :width]
    depth_of = torch.where(on_path, on_path.cumsum(1) - 1, width)  # off the path: a spare column
    path = torch.zeros(num_tokens, width + 1, dtype=torch.int32, device=device)
    path.scatter_(1, depth_of, steps.expand(num_tokens, width))
    return path[:, :width], (on_path.sum(1) - 1).to(torch.int32)


def paged_decode_attention(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D], strided
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int
    query_start: torch.Tensor,  # [B + 1] int
    num_cached: torch.Tensor,  # [B] int
    scale: float,
    *,
    max_query_len: int,  # over the sequences in seq_ids (host value: no device sync)
    max_seq_len: int,
    tree_mask: torch.Tensor | None = None,  # [T, >= max_query_len] bool, None: causal chains
    seq_ids: torch.Tensor | None = None,  # [Bd] int32 sequences to attend; None: all
    num_splits: int | None = None,  # None: choose_num_splits; row-invariant calls split by _INVARIANT_SPLIT_LEN
    out: torch.Tensor | None = None,  # [T, H, D]; rows of other sequences are left untouched
    block_n: int | None = None,  # KV tile (tests); else the row-invariant one, or autotuned on CUDA
    row_invariant: bool | None = None,  # None: on CUDA (see _INVARIANT_BLOCK_M)
    paths: tuple[torch.Tensor, torch.Tensor] | None = None,  # row-invariant: token_paths(...); None: made here
) -> torch.Tensor:
    T, H, D = q.shape
    _, page_size, kvh, d_cache = k_cache.shape
    check_paged_cache(k_cache, v_cache)
    if d_cache != D or H % kvh or D < 16 or D & (D - 1):
        raise ValueError(f"q {tuple(q.shape)} vs cache {tuple(k_cache.shape)}: need equal power-of-two head_dim "
                         f">= 16 and heads a multiple of kv heads")
    if q.dtype != k_cache.dtype or q.stride(2) != 1:
        raise ValueError(f"q must be {k_cache.dtype} with a contiguous head_dim, got {q.dtype} {q.stride()}")
    if row_invariant is None:
        row_invariant = q.device.type == "cuda"
    if not 1 <= max_query_len <= (T if row_invariant else MAX_VERIFY_QUERY):
        raise ValueError(f"decode/verify takes 1..{MAX_VERIFY_QUERY} query tokens per sequence (any number "
                         f"in the row-invariant mode), got {max_query_len}")
    if tree_mask is not None and (tree_mask.dtype != torch.bool or tree_mask.stride(1) != 1
                                  or tree_mask.shape[0] != T or tree_mask.shape[1] < max_query_len):
        raise ValueError(f"tree_mask must be a row-contiguous bool [T, max_q], got {tree_mask.dtype} "
                         f"{tuple(tree_mask.shape)}")
    check_device(q.device, k_cache=k_cache, block_tables=block_tables, query_start=query_start,
                 num_cached=num_cached, tree_mask=tree_mask, seq_ids=seq_ids, out=out)
    if seq_ids is None:
        seq_ids = torch.arange(block_tables.shape[0], dtype=torch.int32, device=q.device)
    if out is None:
        out = torch.empty_like(q)
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(2) != 1:
        raise ValueError(f"out must be like q {tuple(q.shape)}, got {tuple(out.shape)} {out.dtype}")
    num_seqs = seq_ids.shape[0]
    if num_seqs == 0:
        return out
    group = H // kvh
    g_pad = next_pow2(group)
    block_m = max(_INVARIANT_BLOCK_M, g_pad) if row_invariant else decode_block_m(max_query_len, group)
    tokens = 1 if row_invariant else block_m // g_pad
    q_tiles = -(-max_query_len // tokens)
    if row_invariant:
        path, depth = paths if paths is not None else token_paths(query_start, tree_mask, T, max_query_len)
        if path.shape[0] != T or path.shape[1] < max_query_len or path.stride(1) != 1 or depth.shape != (T,) \
                or path.dtype != torch.int32 or depth.dtype != torch.int32:
            raise ValueError(f"paths must be int32 [T, >= max_q] with unit column stride and [T], got "
                             f"{path.dtype} {tuple(path.shape)} {path.stride()} / {depth.dtype} {tuple(depth.shape)}")
        check_device(q.device, path=path, depth=depth)
        split_len = _INVARIANT_SPLIT_LEN
    else:
        path = depth = query_start  # never read
        if num_splits is None:
            num_splits = choose_num_splits(num_seqs * kvh * q_tiles, max_seq_len, sm_count(q.device))
        split_len = -(-max_seq_len // max(1, num_splits))
        split_len = -(-split_len // 16) * 16  # whole 16-token tiles
    num_splits = -(-max_seq_len // split_len)
    split = num_splits > 1
    tiles = num_seqs * kvh * q_tiles
    # split workspace: one partial [rows, D] output and log-sum-exp per (split, program tile)
    rows = tokens * g_pad  # the rows a tile can store (fewer than block_m in the row-invariant mode)
    part_out = torch.empty((num_splits, tiles, rows, D) if split else (1, 1, 1, 1), dtype=torch.float32,
                           device=q.device)
    part_lse = torch.empty((num_splits, tiles, rows) if split else (1, 1, 1), dtype=torch.float32,
                           device=q.device)
    has_tree = tree_mask is not None and not row_invariant  # paths replace the mask
    mask = tree_mask if has_tree else q  # never read without a tree
    args = (
        q, k_cache, v_cache, out, part_out, part_lse, seq_ids, query_start, num_cached, block_tables, mask,
        path, depth, scale * _LOG2E, split_len, q_tiles,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0), mask.stride(0),
        path.stride(0), part_out.stride(0), part_out.stride(1), part_lse.stride(0), part_lse.stride(1),
    )
    meta = dict(GROUP=group, G_PAD=g_pad, HEAD_DIM=D, PAGE_SIZE=page_size, BLOCK_M=block_m,
                HAS_TREE=has_tree, SPLIT=split, UPCAST=upcast(q.dtype),
                DOT_PRECISION=dot_precision(q.dtype), TOKENS=tokens, PATHS=row_invariant)
    grid = (kvh * q_tiles, num_seqs, num_splits)
    if row_invariant:
        _paged_decode_kernel[grid](*args, **meta, BLOCK_N=block_n or _INVARIANT_BLOCK_N, num_warps=_INVARIANT_WARPS)
    elif use_autotune(q.device) and block_n is None:
        _tuned_decode_kernel()[grid](*args, **meta)
    else:
        _paged_decode_kernel[grid](*args, **meta, BLOCK_N=block_n or _INTERPRET_BLOCK_N, num_warps=4)
    if split:
        _split_reduce_kernel[(kvh * q_tiles, num_seqs)](
            out, part_out, part_lse, seq_ids, query_start, num_splits, q_tiles,
            out.stride(0), out.stride(1), part_out.stride(0), part_out.stride(1), part_lse.stride(0),
            part_lse.stride(1), GROUP=group, G_PAD=g_pad, HEAD_DIM=D, BLOCK_M=block_m, TOKENS=tokens,
        )
    return out


def paged_attention_ref(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks]
    query_start: torch.Tensor,  # [B + 1]
    num_cached: torch.Tensor,  # [B]
    scale: float,
    tree_mask: torch.Tensor | None = None,  # [T, max_q] bool, None: causal chains
    positions: torch.Tensor | None = None,  # [T]: query positions (a tree token's by depth), with a window
    sliding_window: int | None = None,  # a query at position p sees only keys at positions > p - W
) -> torch.Tensor:
    """Plain torch, one sequence at a time, in fp32: the semantics the kernel must match."""
    T, H, D = q.shape
    page = k_cache.shape[1]
    group = H // k_cache.shape[2]
    out = torch.zeros(T, H, D, dtype=torch.float32, device=q.device)
    for b in range(block_tables.shape[0]):
        first, last = int(query_start[b]), int(query_start[b + 1])
        n, cached = last - first, int(num_cached[b])
        pos = torch.arange(cached + n, device=q.device)
        blocks = block_tables[b, pos // page]
        k = k_cache[blocks, pos % page].float().repeat_interleave(group, dim=1)  # [L, H, D]
        v = v_cache[blocks, pos % page].float().repeat_interleave(group, dim=1)
        if tree_mask is None:
            new_visible = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        else:
            new_visible = tree_mask[first:last, :n]
        visible = torch.cat([torch.ones(n, cached, dtype=torch.bool, device=q.device), new_visible], dim=1)
        if sliding_window is not None:  # a cached key's position is its index, a new token's its own
            q_pos = positions[first:last] if positions is not None else pos[cached:]
            k_pos = torch.cat([pos[:cached], q_pos])
            visible &= k_pos[None, :] > q_pos[:, None] - sliding_window
        s = torch.einsum("qhd,khd->hqk", q[first:last].float(), k) * scale  # [H, n, L]
        p = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)
        out[first:last] = torch.einsum("hqk,khd->qhd", p, v)
    return out.to(q.dtype)
