"""Prefill attention kernel (causal, over a cached paged prefix) against its torch reference."""
from __future__ import annotations

import math

import pytest
import torch

from kernels.paged_attention import paged_attention_ref
from kernels.prefill_attention import prefill_attention, prefill_attention_ref, prefill_tiles
from tests.kernels.paged_data import assert_close, make_paged_batch

CASES = [
    # (num_cached, num_new, is_tree) per sequence, page, kv_heads, group, head_dim, dtype, block_n
    pytest.param([(0, 65, False), (17, 80, False)], 16, 2, 1, 64, torch.float32, 32, id="g1-d64-f32"),
    pytest.param([(1, 70, False), (15, 1, False), (33, 40, False)], 16, 1, 3, 128, torch.float16, 16,
                 id="g3-d128-f16"),
    pytest.param([(16, 100, False), (0, 9, False)], 8, 1, 7, 64, torch.float32, 32, id="page8-g7-f32"),
    pytest.param([(47, 66, False)], 64, 2, 7, 128, torch.float16, 64, id="page64-g7-d128-f16"),
    pytest.param([(5, 72, False)], 16, 1, 3, 64, torch.bfloat16, 32, id="g3-bf16"),
]


@pytest.mark.parametrize("seqs, page, kv_heads, group, head_dim, dtype, block_n", CASES)
def test_prefill_matches_reference(seqs: list[tuple[int, int, bool]], page: int, kv_heads: int, group: int,
                                   head_dim: int, dtype: torch.dtype, block_n: int) -> None:
    pb = make_paged_batch(seqs, page=page, kv_heads=kv_heads, group=group, head_dim=head_dim, dtype=dtype, seed=4)
    m = pb.meta
    scale = 1 / math.sqrt(head_dim)
    tiles = prefill_tiles(m.query_lens_host, range(m.num_seqs), group, pb.q.device)
    out = prefill_attention(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, scale, tiles=tiles,
                            block_n=block_n)
    ref = prefill_attention_ref(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, scale)
    assert_close(out, ref)


def test_prefill_with_a_long_tree() -> None:
    """A tree too long for the decode kernel, beside a chain: the prefill kernel applies tree_mask."""
    pb = make_paged_batch([(20, 90, True), (3, 70, False)], page=16, kv_heads=1, group=3, head_dim=64,
                     dtype=torch.float32, seed=5)
    m = pb.meta
    tiles = prefill_tiles(m.query_lens_host, [0, 1], 3, pb.q.device)
    out = prefill_attention(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125, tiles=tiles,
                            tree_mask=m.tree_mask)
    ref = paged_attention_ref(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125, m.tree_mask)
    assert_close(out, ref)


def test_references_agree_on_chains() -> None:
    """The two references are written independently (loop + einsum, SDPA): they agree on causal chains."""
    pb = make_paged_batch([(0, 5, False), (30, 12, False)], page=16, kv_heads=2, group=3, head_dim=64,
                     dtype=torch.float32, seed=6)
    m = pb.meta
    a = prefill_attention_ref(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125)
    b = paged_attention_ref(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125, None)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_tiles_cover_every_token_once() -> None:
    tiles = prefill_tiles([100, 3, 64], [0, 2], group=3, device=torch.device("cpu"))
    per = tiles.tokens_per_tile
    assert per == 128 // 4  # group 3 pads to 4 heads per token
    seen = [(s, t) for s, first in tiles.table.tolist() for t in range(first, min(first + per, [100, 3, 64][s]))]
    assert sorted(seen) == [(0, t) for t in range(100)] + [(2, t) for t in range(64)]


def test_rejects_a_tile_table_for_another_group() -> None:
    pb = make_paged_batch([(0, 70, False)], page=16, kv_heads=1, group=1, head_dim=64, dtype=torch.float32)
    m = pb.meta
    tiles = prefill_tiles(m.query_lens_host, [0], 8, pb.q.device)  # built for 8 heads per KV head
    with pytest.raises(ValueError, match="tile table"):
        prefill_attention(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125, tiles=tiles)
