"""Readable torch attention over the paged KV cache: the reference, and the CPU serving path.

Plan (once per step): gather indices and a dense boolean mask. Per layer: gather the sequences'
blocks, pad queries to [B, max_q], one ``scaled_dot_product_attention`` with GQA, unpad.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.attention.base import KVLayerCache
from engine.batch import AttentionMetadata


@dataclass(frozen=True, slots=True)
class TorchAttentionPlan:
    meta: AttentionMetadata
    write_block: torch.Tensor  # [T] block id of each new token's slot
    write_offset: torch.Tensor  # [T] offset inside the block
    block_tables: torch.Tensor  # [B, n_blocks] blocks to gather (n_blocks covers max_seq_len)
    q_index: torch.Tensor  # [B, max_q] token row of each padded query (padding -> 0)
    q_valid: torch.Tensor  # [B, max_q] bool
    mask: torch.Tensor | None  # [B, 1, max_q, n_blocks * block_size] bool, True = may attend
    decode_only: bool  # one query per sequence: no query padding to gather or drop
    kv_len: int  # keys to read per sequence (gathered blocks are cut to this)


class TorchAttentionBackend:
    name = "torch"

    def plan(self, meta: AttentionMetadata) -> TorchAttentionPlan:
        device = meta.positions.device
        bs = meta.block_size
        n_blocks = -(-meta.max_seq_len // bs)
        kv_len = n_blocks * bs
        B, max_q = meta.num_seqs, meta.max_query_len
        q_lens = torch.tensor(meta.query_lens_host, device=device)
        ar_q = torch.arange(max_q, device=device)
        q_valid = ar_q[None, :] < q_lens[:, None]  # [B, max_q]
        q_index = torch.where(q_valid, meta.query_start[:-1, None] + ar_q[None, :], 0)
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
        decode_only = max_q == 1
        if decode_only and B == 1:
            mask, kv_len = None, meta.seq_lens_host[0]  # one decode token sees every cached key: no mask
        return TorchAttentionPlan(
            meta=meta,
            write_block=meta.slot_mapping // bs,
            write_offset=meta.slot_mapping % bs,
            block_tables=meta.block_tables[:, :n_blocks],
            q_index=q_index,
            q_valid=q_valid,
            mask=mask[:, None] if mask is not None else None,
            decode_only=decode_only,
            kv_len=kv_len,
        )

    def write_kv(self, cache: KVLayerCache, k: torch.Tensor, v: torch.Tensor, plan: TorchAttentionPlan) -> None:
        cache.k[plan.write_block, plan.write_offset] = k
        cache.v[plan.write_block, plan.write_offset] = v

    def attend(self, q: torch.Tensor, cache: KVLayerCache, plan: TorchAttentionPlan, scale: float) -> torch.Tensor:
        B, n_blocks = plan.block_tables.shape
        _, bs, kvh, d = cache.k.shape
        # [B, n_blocks, bs, kvh, d] -> [B, kvh, kv_len, d]
        k = cache.k[plan.block_tables].reshape(B, n_blocks * bs, kvh, d)[:, : plan.kv_len].transpose(1, 2)
        v = cache.v[plan.block_tables].reshape(B, n_blocks * bs, kvh, d)[:, : plan.kv_len].transpose(1, 2)
        if plan.decode_only:  # T == B: token b is sequence b's only query
            qp = q[:, None].transpose(1, 2)  # [B, H, 1, d]
        else:
            qp = q[plan.q_index].transpose(1, 2)  # [B, H, max_q, d]
        out = F.scaled_dot_product_attention(qp, k, v, attn_mask=plan.mask, scale=scale, enable_gqa=True)
        if plan.decode_only:
            return out[:, :, 0]  # [T, H, d]
        return out.transpose(1, 2)[plan.q_valid]  # [T, H, d]

    def copy_slots(self, pool: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
        bs = pool.shape[3]
        # gather first, then scatter: a correct copy even where dst and src overlap
        vals = pool[src // bs, :, :, src % bs]  # [N, L, 2, kvh, d]
        pool[dst // bs, :, :, dst % bs] = vals
