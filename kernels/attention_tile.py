"""Paged online-softmax attention of one tile of query rows, shared by the decode/verify and prefill kernels.

A program owns BLOCK_M *rows*: (query token, query head) pairs of one sequence and one KV head,
row r = token (r // G_PAD), head-in-group (r % G_PAD). Every query head of a KV head is in the same
tile, so K/V are loaded once per group and both products are matrix-matrix (``tl.dot``) even for a
single query token (GQA as a matrix of queries).

Logical KV index p of a sequence lives in physical block ``block_table[p // PAGE_SIZE]`` at offset
``p % PAGE_SIZE``; K/V rows are gathered token by token, so tiles need not align with pages.
Visibility: p < num_cached is visible to every row; a new token j = p - num_cached is visible to row
token t iff ``tree_mask[query_first + t, j]`` (HAS_TREE) or j <= t (a causal chain).

Path mode (PATHS, the decode kernel's row-invariant mode: one query token per program): the program
attends its token's *path*, the keys plain decoding would see, in plain decoding's order. Logical
index p < num_cached is the cached token p; p = num_cached + d is the token's ancestor at depth d
(``path_row_ptr[d]``, an index among the new tokens; the last is the token itself), read from that
ancestor's slot. Every key in range is visible, so a tree's node and the same token decoded after
its ancestors meet the same keys at the same tile columns: the same arithmetic on the same data.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _attend_paged(
    q,  # [BLOCK_M, HEAD_DIM]
    k_head_ptr, v_head_ptr,  # cache base pointers already offset to this KV head
    table_row_ptr,  # this sequence's block-table row
    mask_row_ptrs,  # [BLOCK_M] pointers to each row's tree-mask row (HAS_TREE only)
    path_row_ptr,  # the program's token's path: new-token index by depth (PATHS only)
    row_tok, row_valid,  # [BLOCK_M] token index among the new tokens; row holds a real (token, head)
    kv_lo, kv_hi, num_cached, qk_scale,  # logical KV range to attend, cached length, scale * log2(e)
    stride_kb, stride_kt,
    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_TREE: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, PATHS: tl.constexpr,
):
    """Online softmax of the rows over logical KV [kv_lo, kv_hi). Returns the unnormalized output
    [BLOCK_M, HEAD_DIM], the running max m (log2 domain) and the sum l, all fp32.

    The tile body is written inline, not as a helper: the interpreter re-patches the language on
    every nested jit call, which would cost milliseconds per KV tile."""
    offs_d = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(kv_lo, kv_hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] logical KV index
        in_range = offs_n < kv_hi
        if PATHS:  # past the cache: the ancestor at depth d = p - num_cached, from its own slot
            d = offs_n - num_cached
            on_path = in_range & (d >= 0)
            src = tl.where(on_path, num_cached + tl.load(path_row_ptr + d, mask=on_path, other=0), offs_n)
        else:
            src = offs_n
        block = tl.load(table_row_ptr + src // PAGE_SIZE, mask=in_range, other=0).to(tl.int64)
        kv_off = (block * stride_kb + (src % PAGE_SIZE) * stride_kt)[:, None] + offs_d[None, :]  # [BLOCK_N, D]
        k = tl.load(k_head_ptr + kv_off, mask=in_range[:, None], other=0.0)
        v = tl.load(v_head_ptr + kv_off, mask=in_range[:, None], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
        if PATHS:  # the path is all the token sees, and it sees all of it
            s = tl.where(in_range[None, :], s, float("-inf"))
        elif start + BLOCK_N > num_cached:  # the tile reaches the new tokens: tree or causal visibility
            j = offs_n - num_cached  # index among the new tokens; negative: cached, visible to all
            if HAS_TREE:
                new = (j >= 0) & in_range
                tm = tl.load(mask_row_ptrs[:, None] + j[None, :], mask=row_valid[:, None] & new[None, :], other=0)
                visible = (j < 0)[None, :] | (tm != 0)
            else:
                visible = j[None, :] <= row_tok[:, None]  # causal; true for every cached index
            s = tl.where(visible & row_valid[:, None] & in_range[None, :], s, float("-inf"))
        else:  # cached keys only, visible to every row: no [BLOCK_M, BLOCK_N] mask to build (a padding
            # row sees them too; its finite result is never stored)
            s = tl.where(in_range[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row that has seen nothing yet keeps m = -inf: subtract 0 instead, so exp2 gives 0, not NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _load_rows(
    q_ptr, q_first, row_tok, row_head, row_valid, stride_qt, stride_qh,
    HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr,
):
    """q rows of this tile: [BLOCK_M, HEAD_DIM], zeros for padding rows."""
    offs_d = tl.arange(0, HEAD_DIM)
    off = (q_first + row_tok).to(tl.int64) * stride_qt + row_head * stride_qh  # [BLOCK_M]
    q = tl.load(q_ptr + off[:, None] + offs_d[None, :], mask=row_valid[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    return q


@triton.jit
def _store_rows(
    out_ptr, out, q_first, row_tok, row_head, row_valid, stride_ot, stride_oh, HEAD_DIM: tl.constexpr,
):
    offs_d = tl.arange(0, HEAD_DIM)
    off = (q_first + row_tok).to(tl.int64) * stride_ot + row_head * stride_oh  # [BLOCK_M]
    tl.store(out_ptr + off[:, None] + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None])
