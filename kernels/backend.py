"""``TritonAttentionBackend``: the engine's attention backend on the kernels of this package.

Plan (once per step, from host copies of the lengths: no device sync): route each sequence to the
decode/verify kernel (at most MAX_VERIFY_QUERY new tokens) or the prefill kernel (longer chunks);
in the row-invariant mode (on a GPU) every sequence to the decode kernel, whose one-token programs
give a token the same bits however its step or its prompt's chunks were made up.
Per layer: ``write_kv`` stores the step's K/V, then ``attend`` runs one launch per route, each
filling its sequences' rows of one output.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from engine.attention.base import KVLayerCache, rope_then_write_kv
from engine.batch import AttentionMetadata
from kernels.kv_write import copy_slots, write_kv
from kernels.paged_attention import MAX_VERIFY_QUERY, paged_decode_attention, token_paths
from kernels.prefill_attention import PrefillTiles, prefill_attention, prefill_tiles

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TritonAttentionPlan:
    meta: AttentionMetadata
    decode_seqs: torch.Tensor  # [Bd] int32 sequences for the decode/verify kernel
    decode_max_query: int  # over decode_seqs (0 if none)
    decode_max_seq: int
    prefill_seqs: tuple[int, ...]  # sequences for the prefill kernel
    # row-invariant decode: each new token's path (paged_attention.token_paths), once per step
    decode_paths: tuple[torch.Tensor, torch.Tensor] | None
    # prefill tile tables, built by the first layer for its GQA group size and reused by the rest
    prefill_tiles: dict[int, PrefillTiles] = field(default_factory=dict)


class TritonAttentionBackend:
    name = "triton"
    pads_groups = False

    def __init__(self, num_kv_splits: int | None = None, row_invariant: bool | None = None) -> None:
        # None: the flash-decoding heuristic chooses per call; a number forces it (tests, benchmarks)
        self.num_kv_splits = num_kv_splits
        # the decode attention's row-invariant mode; None: on CUDA (kernels.paged_attention)
        self.row_invariant = row_invariant

    def plan(self, meta: AttentionMetadata) -> TritonAttentionPlan:
        device = meta.positions.device
        invariant = self.row_invariant if self.row_invariant is not None else device.type == "cuda"
        # row-invariant: every token by the decode kernel's paths, prompt chunks too, so a token's bits
        # do not depend on how its prompt was chunked (which lookahead's steps change) nor on its route
        longest = len(meta.positions) if invariant else MAX_VERIFY_QUERY
        decode = [b for b, n in enumerate(meta.query_lens_host) if n <= longest]
        prefill = tuple(b for b, n in enumerate(meta.query_lens_host) if n > longest)
        logger.debug("plan: %d decode/verify and %d prefill sequences", len(decode), len(prefill))
        max_query = max((meta.query_lens_host[b] for b in decode), default=0)
        return TritonAttentionPlan(
            meta=meta,
            decode_seqs=torch.tensor(decode, dtype=torch.int32).to(device),
            decode_max_query=max_query,
            decode_max_seq=max((meta.seq_lens_host[b] for b in decode), default=0),
            prefill_seqs=prefill,
            decode_paths=token_paths(meta.query_start, meta.tree_mask, meta.positions.shape[0], max_query)
            if invariant and max_query else None,
        )

    def write_kv(self, cache: KVLayerCache, k: torch.Tensor, v: torch.Tensor, plan: TritonAttentionPlan) -> None:
        write_kv(cache.k, cache.v, k, v, plan.meta.slot_mapping)

    def rope_write_kv(self, qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, cache: KVLayerCache,
                      plan: TritonAttentionPlan, num_heads: int) -> torch.Tensor:
        return rope_then_write_kv(self, qkv, cos, signed_sin, cache, plan, num_heads)

    def attend(self, q: torch.Tensor, cache: KVLayerCache, plan: TritonAttentionPlan, scale: float) -> torch.Tensor:
        meta = plan.meta
        out = torch.empty_like(q)  # [T, H, D]; every row belongs to exactly one route
        if plan.decode_max_query:
            paged_decode_attention(
                q, cache.k, cache.v, meta.block_tables, meta.query_start, meta.num_cached, scale,
                max_query_len=plan.decode_max_query, max_seq_len=plan.decode_max_seq, tree_mask=meta.tree_mask,
                seq_ids=plan.decode_seqs, num_splits=self.num_kv_splits, out=out, row_invariant=self.row_invariant,
                paths=plan.decode_paths,
            )
        if plan.prefill_seqs:
            group = q.shape[1] // cache.k.shape[2]
            tiles = plan.prefill_tiles.get(group)
            if tiles is None:
                tiles = prefill_tiles(meta.query_lens_host, plan.prefill_seqs, group, q.device)
                plan.prefill_tiles[group] = tiles
            prefill_attention(
                q, cache.k, cache.v, meta.block_tables, meta.query_start, meta.num_cached, scale,
                tiles=tiles, tree_mask=meta.tree_mask, out=out,
            )
        return out

    def copy_slots(self, pool: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
        copy_slots(pool, src, dst)
