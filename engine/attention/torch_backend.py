"""Readable torch attention over the paged KV cache: the reference, and the CPU fallback.

The CPU serving path is ``engine.attention.cpu_backend`` (a C++ kernel) wherever a compiler built
it; this backend serves where none did (and on CUDA for a model the Triton kernels do not take).

Plan (once per step): the blocks to read, where the new K/V go, and a dense boolean mask (none when
every query sees every key it is given: decode with equal lengths); a sliding window (Mistral)
narrows the mask to the keys inside it. Per layer: gather the sequences'
blocks with one ``index_select`` per K and V into buffers the step reuses (the first layer makes
them and their [B, kvh, kv_len, d] views), pad queries to [B, max_q], one
``scaled_dot_product_attention`` with GQA, unpad. A single decode token in fp32 skips SDPA for two
``bmm`` over the kv heads: on CPU that is the cheaper path for one query row per head. 16-bit
models attend in fp64 instead (``_attend_fp64``): row-invariant, so bf16 lookahead is exact.
A step attends in groups (``SplitPlan``, chosen by ``engine.attention.grouping``): decoding
sequences apart from wide ones (lookahead trees, prefill chunks), so a decode's one query is not
padded to a tree's rows, and short sequences apart from long ones, so a short one does not read a
long one's key count.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine.attention.base import KVLayerCache, rope_then_write_kv
from engine.attention.grouping import GROUP_COST_KEY_READS, attention_groups
from engine.batch import AttentionMetadata
from engine.layers import ROW_INVARIANT_DTYPES


@dataclass(frozen=True, slots=True)
class _StepBuffers:
    """The gathered blocks of one step and views of them; rewritten by every layer."""

    k_blocks: torch.Tensor  # [B * n_blocks, bs, kvh, d]
    v_blocks: torch.Tensor
    k: torch.Tensor  # [B, kvh, kv_len, d] views of the blocks
    v: torch.Tensor
    k0_t: torch.Tensor  # [kvh, d, kv_len]: sequence 0's keys, transposed, and values (single decode)
    v0: torch.Tensor  # [kvh, kv_len, d]
    no_input: torch.Tensor  # [1, 1, 1]: baddbmm's input, ignored with beta=0
    group_shape: tuple[int, int, int]  # (kvh, heads per kv head, d): a query row grouped by kv head
    exact: tuple[torch.Tensor, torch.Tensor] | None  # 16-bit models: [B, kvh, kv_len, d] fp64 K and V
    hidden: torch.Tensor | None  # 16-bit models: [B, 1, max_q, kv_len - mask_from] ~mask, True = masked


@dataclass(frozen=True, slots=True)
class TorchAttentionPlan:
    meta: AttentionMetadata
    write_block: torch.Tensor  # [T] block id of each new token's slot
    write_offset: torch.Tensor  # [T] offset inside the block
    blocks: torch.Tensor  # [B * n_blocks] the block tables, flat, cut to the blocks max_seq_len covers
    kv_len: int  # keys to read per sequence (gathered blocks are cut to this)
    # small decode steps on a multi-threaded CPU: attention is too little work to pay for OpenMP
    # fork/joins (and one descheduled worker stalls every join on a shared machine)
    one_thread: bool
    # decode (one query per sequence, T == B) needs no query padding: these two are then None
    q_index: torch.Tensor | None  # [B, max_q] token row of each padded query (padding -> 0)
    q_valid: torch.Tensor | None  # [B, max_q] bool
    mask: torch.Tensor | None  # [B, 1, max_q, kv_len] bool, True = may attend; None: all visible
    # keys before mask_from are visible to every real query row (no window; padded rows are dropped):
    # the fp64 path masks only the columns from there on (a tree's own columns at batch 1)
    mask_from: int = 0
    buffers: list[_StepBuffers] = field(default_factory=list)  # made by the first layer

    @property
    def single_decode(self) -> bool:
        """One sequence, one query token, every key visible."""
        return self.q_index is None and self.mask is None and self.meta.num_seqs == 1


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """A step whose sequences attend in groups (``engine.attention.grouping``): decoding ones apart
    from wide ones, and each kind split by length where padding would cost more than a group."""

    write_block: torch.Tensor  # [T] of the whole step
    write_offset: torch.Tensor
    parts: tuple[tuple[torch.Tensor, TorchAttentionPlan], ...]  # (the group's token rows [T'], its plan)


# keys a decode step may gather per layer and still attend on one thread. Measured on 2 cores
# (SmolLM2, 3 kv heads of 64): batch 1 at 272 keys is as fast on one thread when the machine is idle
# and 2x faster when it is shared; batch 8 at 272 keys each gathers 13% faster on two when idle.
_ONE_THREAD_MAX_KEYS = 512


def _decode_mask(meta: AttentionMetadata, kv_len: int) -> torch.Tensor | None:
    """Decode: query b sees keys 0 .. seq_len[b] - 1. None when every sequence has kv_len keys."""
    if all(n == kv_len for n in meta.seq_lens_host):
        return None
    kv = torch.arange(kv_len, device=meta.positions.device)
    return (kv[None, :] < meta.seq_lens[:, None])[:, None, None]  # [B, 1, 1, kv_len]


def _window_mask(meta: AttentionMetadata, kv_len: int, q_index: torch.Tensor | None) -> torch.Tensor:
    """[B, max_q, kv_len] bool: key k is inside the sliding window of query q (position p_q - W < p_k).

    A key's position is its KV index for cached tokens and for the step's chain tokens; a tree
    token's position is its depth, read from ``meta.positions``. q_index: [B, max_q] token row of
    each query (None for decode: row b). Keys past a sequence's length are cut by the other mask.
    """
    assert meta.sliding_window is not None
    device = meta.positions.device
    kv = torch.arange(kv_len, device=device)
    q_pos = meta.positions[:, None] if q_index is None else meta.positions[q_index]  # [B, max_q]
    kv_pos = kv.expand(meta.num_seqs, kv_len)
    if meta.tree_mask is not None:  # new token j sits at KV index num_cached + j, position by depth
        j = kv[None, :] - meta.num_cached[:, None]  # [B, kv_len]
        is_new = (j >= 0) & (kv[None, :] < meta.seq_lens[:, None])
        rows = (meta.query_start[:-1, None] + j).clamp(0, meta.num_tokens - 1)
        kv_pos = torch.where(is_new, meta.positions[rows], kv_pos)
    return kv_pos[:, None, :] > q_pos[:, :, None] - meta.sliding_window


def _general_mask(meta: AttentionMetadata, kv_len: int, q_valid: torch.Tensor) -> torch.Tensor:
    """[B, max_q, kv_len]: cached keys, plus the new tokens the chain or tree lets each query see."""
    device = meta.positions.device
    B, max_q = meta.num_seqs, meta.max_query_len
    q_lens = torch.tensor(meta.query_lens_host, device=device)
    ar_q = torch.arange(max_q, device=device)
    kv = torch.arange(kv_len, device=device)
    cached = meta.num_cached[:, None, None]  # [B, 1, 1]
    # past tokens: everything before num_cached
    mask = (kv[None, None, :] < cached).expand(B, max_q, kv_len).clone()
    # new tokens: the tree (or causal) mask, placed at kv index num_cached + j
    j = kv[None, None, :] - cached  # [B, 1, kv_len] index among new tokens
    in_new = (j >= 0) & (j < q_lens[:, None, None])
    if meta.tree_mask is None:
        new_vis = in_new & (j <= ar_q[None, :, None])
    else:
        tm = torch.zeros(B, max_q, max_q + 1, dtype=torch.bool, device=device)
        tm[:, :, :max_q][q_valid] = meta.tree_mask  # rows in token order
        new_vis = in_new & torch.gather(tm, 2, j.clamp(0, max_q).expand(B, max_q, kv_len))
    mask |= new_vis
    mask[~q_valid] = False
    mask[..., 0] |= ~q_valid  # padded query rows see one key so softmax stays finite
    return mask


def _attend_fp64(q: torch.Tensor, buf: _StepBuffers, plan: TorchAttentionPlan, scale: float) -> torch.Tensor:
    """Row-invariant attention for 16-bit models: a query row gets the same bits whatever shares its step.

    Lookahead verifies a tree where plain decoding runs one token, and a batch pads and masks each
    sequence differently from step to step, so a kernel whose rounding depends on the number of
    query rows or padded keys (SDPA's does, in bf16) makes lookahead change greedy output. In fp64
    a product of two 16-bit values is exact (at most 22 significant bits), a score of 64 of them is
    exact while their magnitudes span less than 2^31 and otherwise errs near 1e-16, and so do the
    softmax and value sums: the final rounding to 16 bits swallows that except with negligible
    probability, so masked keys (exp = 0), padding and the number of rows change nothing.
    q: [T, H, d]; buf.k / buf.v: [B, kvh, S, d] -> [T, H, d].
    """
    B, kvh, S, d = buf.k.shape
    H = q.shape[1]
    qp = q[:, None] if plan.q_index is None else q[plan.q_index]  # [B, Q, H, d]
    Q, G = qp.shape[1], H // kvh
    # query head h reads kv head h // G: group the rows of one kv head as [B, kvh, Q * G, d]
    # the scale goes on the queries (Q * G * d products, not Q * G * S): for a power of two
    # (head_dim 64, 256) the same bits as scaling the scores, and every row the same op anyway
    qg = qp.reshape(B, Q, kvh, G, d).permute(0, 2, 1, 3, 4).reshape(B, kvh, Q * G, d).double().mul_(scale)
    k64, v64 = buf.exact  # contiguous fp64 copies: matmul then folds [B, kvh] into one bmm without copying
    k64.copy_(buf.k)
    v64.copy_(buf.v)
    scores = torch.matmul(qg, k64.transpose(-1, -2))  # [B, kvh, Q * G, S]
    if buf.hidden is not None:  # [B, 1, Q, S - mask_from] -> every head of the group
        hidden = scores.view(B, kvh, Q, G, S)[..., plan.mask_from :]
        hidden.masked_fill_(buf.hidden[:, :, :, None, :], float("-inf"))
    out = torch.matmul(scores.softmax(-1), v64)  # [B, kvh, Q * G, d]
    out = out.view(B, kvh, Q, G, d).permute(0, 2, 1, 3, 4).reshape(B, Q, H, d).to(q.dtype)
    return out[:, 0] if plan.q_index is None else out[plan.q_valid]


def _step_buffers(cache: KVLayerCache, plan: TorchAttentionPlan, heads: int) -> _StepBuffers:
    n, bs, kvh, d = plan.blocks.shape[0], *cache.k.shape[1:]
    B, S = plan.meta.num_seqs, plan.kv_len
    k_blocks, v_blocks = cache.k.new_empty((n, bs, kvh, d)), cache.v.new_empty((n, bs, kvh, d))
    # token t of sequence b is row b * (n / B) * bs + t of the gathered blocks
    size, stride = (B, kvh, S, d), (n // B * bs * kvh * d, d, kvh * d, 1)
    k, v = k_blocks.as_strided(size, stride), v_blocks.as_strided(size, stride)
    exact = hidden = None
    if cache.k.dtype in ROW_INVARIANT_DTYPES:
        exact = (cache.k.new_empty(size, dtype=torch.float64), cache.k.new_empty(size, dtype=torch.float64))
        hidden = None if plan.mask is None else ~plan.mask[..., plan.mask_from :]
    return _StepBuffers(k_blocks, v_blocks, k, v, k[0].transpose(1, 2), v[0], cache.k.new_empty((1, 1, 1)),
                        (kvh, heads // kvh, d), exact, hidden)


class TorchAttentionBackend:
    name = "torch"
    pads_groups = True

    def __init__(self, group_cost: int = GROUP_COST_KEY_READS) -> None:
        self.group_cost = group_cost  # a group's fixed cost in key reads (grouping.attention_groups)

    def plan(self, meta: AttentionMetadata) -> TorchAttentionPlan | SplitPlan:
        groups = attention_groups(meta.query_lens_host, meta.seq_lens_host, self.group_cost)
        if len(groups) == 1:
            return self._plan(meta)
        parts = tuple((rows, self._plan(sub)) for rows, sub in (meta.select(g) for g in groups))
        return SplitPlan(meta.slot_mapping // meta.block_size, meta.slot_mapping % meta.block_size, parts)

    def _plan(self, meta: AttentionMetadata) -> TorchAttentionPlan:
        bs = meta.block_size
        n_blocks = -(-meta.max_seq_len // bs)
        common = dict(
            meta=meta,
            write_block=meta.slot_mapping // bs,
            write_offset=meta.slot_mapping % bs,
            blocks=meta.block_tables[:, :n_blocks].reshape(-1),
        )
        if meta.max_query_len == 1:  # decode: token b is sequence b's only query
            kv_len = meta.max_seq_len
            one_thread = (meta.positions.device.type == "cpu" and torch.get_num_threads() > 1
                          and meta.num_seqs * n_blocks * bs <= _ONE_THREAD_MAX_KEYS)
            mask = _decode_mask(meta, kv_len)
            if meta.window_applies:
                window = _window_mask(meta, kv_len, None)[:, None]  # [B, 1, 1, kv_len]
                mask = window if mask is None else mask & window
            return TorchAttentionPlan(**common, kv_len=kv_len, one_thread=one_thread, q_index=None, q_valid=None,
                                      mask=mask, mask_from=0 if meta.window_applies else min(meta.seq_lens_host))
        kv_len = n_blocks * bs
        device = meta.positions.device
        ar_q = torch.arange(meta.max_query_len, device=device)
        q_valid = ar_q[None, :] < torch.tensor(meta.query_lens_host, device=device)[:, None]  # [B, max_q]
        q_index = torch.where(q_valid, meta.query_start[:-1, None] + ar_q[None, :], 0)
        mask = _general_mask(meta, kv_len, q_valid)
        if meta.window_applies:
            mask &= _window_mask(meta, kv_len, q_index) | ~q_valid[:, :, None]  # padded rows keep their key
        cached = min(n - q for n, q in zip(meta.seq_lens_host, meta.query_lens_host))
        return TorchAttentionPlan(**common, kv_len=kv_len, one_thread=False, q_index=q_index, q_valid=q_valid,
                                  mask=mask[:, None], mask_from=0 if meta.window_applies else cached)

    def write_kv(self, cache: KVLayerCache, k: torch.Tensor, v: torch.Tensor,
                 plan: TorchAttentionPlan | SplitPlan) -> None:
        index = (plan.write_block, plan.write_offset)
        cache.k.index_put_(index, k)
        cache.v.index_put_(index, v)

    def rope_write_kv(self, qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, cache: KVLayerCache,
                      plan: TorchAttentionPlan | SplitPlan, num_heads: int) -> torch.Tensor:
        return rope_then_write_kv(self, qkv, cos, signed_sin, cache, plan, num_heads)

    def attend(self, q: torch.Tensor, cache: KVLayerCache, plan: TorchAttentionPlan | SplitPlan,
               scale: float) -> torch.Tensor:
        if isinstance(plan, SplitPlan):
            out = torch.empty_like(q)
            for rows, part in plan.parts:
                out.index_copy_(0, rows, self.attend(q.index_select(0, rows), cache, part, scale))
            return out
        if not plan.one_thread:
            return self._attend(q, cache, plan, scale)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._attend(q, cache, plan, scale)
        finally:
            torch.set_num_threads(threads)

    def _attend(self, q: torch.Tensor, cache: KVLayerCache, plan: TorchAttentionPlan, scale: float) -> torch.Tensor:
        if not plan.buffers:
            plan.buffers.append(_step_buffers(cache, plan, q.shape[1]))
        buf = plan.buffers[0]
        torch.index_select(cache.k, 0, plan.blocks, out=buf.k_blocks)
        torch.index_select(cache.v, 0, plan.blocks, out=buf.v_blocks)
        if plan.single_decode and q.dtype == torch.float32:
            # [kvh, group, d] @ [kvh, d, S] -> softmax -> @ [kvh, S, d]; fp32 only: in 16-bit types
            # SDPA's fp32 accumulation is what transformers computes
            scores = torch.baddbmm(buf.no_input, q.view(buf.group_shape), buf.k0_t, beta=0, alpha=scale)
            return torch.bmm(scores.softmax(-1), buf.v0).view(q.shape)  # [1, H, d]
        if q.dtype in ROW_INVARIANT_DTYPES:
            return _attend_fp64(q, buf, plan, scale)
        if plan.q_index is None:  # decode: T == B
            out = F.scaled_dot_product_attention(q[:, :, None], buf.k, buf.v, attn_mask=plan.mask, scale=scale,
                                                 enable_gqa=True)
            return out[:, :, 0]  # [T, H, d]
        qp = q[plan.q_index].transpose(1, 2)  # [B, H, max_q, d]
        out = F.scaled_dot_product_attention(qp, buf.k, buf.v, attn_mask=plan.mask, scale=scale, enable_gqa=True)
        return out.transpose(1, 2)[plan.q_valid]  # [T, H, d]

    def copy_slots(self, pool: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
        bs = pool.shape[3]
        # gather first, then scatter: a correct copy even where dst and src overlap
        vals = pool[src // bs, :, :, src % bs]  # [N, L, 2, kvh, d]
        pool[dst // bs, :, :, dst % bs] = vals
