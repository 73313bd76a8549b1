"""Decode/verify attention kernel against its torch reference (and the reference against the engine's)."""
from __future__ import annotations

import math

import pytest
import torch

from engine.attention.base import KVLayerCache
from engine.attention.grouping import attention_groups
from engine.attention.torch_backend import SplitPlan, TorchAttentionBackend
from kernels.paged_attention import (
    MAX_VERIFY_QUERY,
    choose_num_splits,
    decode_block_m,
    paged_attention_ref,
    paged_decode_attention,
)
from tests.kernels.paged_data import assert_close, make_paged_batch

# (num_cached, num_new, is_tree) per sequence; contexts around the page size, trees mixed with chains
CASES = [
    # seqs, page, kv_heads, group, head_dim, dtype, num_splits, block_n
    pytest.param([(1, 1, False), (15, 4, False), (17, 1, False)], 16, 2, 1, 64, torch.float32, 1, 16,
                 id="chains-g1-d64-f32"),
    pytest.param([(16, 16, True), (0, 33, True), (47, 4, False)], 16, 1, 3, 128, torch.float16, 1, 32,
                 id="trees-g3-d128-f16"),
    pytest.param([(31, 1, False), (33, 33, True)], 16, 1, 7, 64, torch.float32, 3, 32, id="split3-tree-g7-f32"),
    pytest.param([(9, 4, False), (1, 16, False), (7, 1, False)], 8, 1, 7, 128, torch.float16, 2, 16,
                 id="split2-chains-page8-g7-d128-f16"),
    pytest.param([(63, 1, False), (65, 4, True), (100, 33, True)], 64, 2, 3, 64, torch.float16, 4, 32,
                 id="split4-page64-g3-f16"),
    pytest.param([(0, MAX_VERIFY_QUERY, True), (5, 1, False)], 16, 1, 1, 64, torch.float32, 1, 64,
                 id="max-tree-g1-f32"),
    pytest.param([(17, 8, True)], 16, 2, 3, 64, torch.bfloat16, 2, 32, id="split2-tree-bf16"),
]


@pytest.mark.parametrize("seqs, page, kv_heads, group, head_dim, dtype, num_splits, block_n", CASES)
def test_decode_matches_reference(seqs: list[tuple[int, int, bool]], page: int, kv_heads: int, group: int,
                                  head_dim: int, dtype: torch.dtype, num_splits: int, block_n: int) -> None:
    pb = make_paged_batch(seqs, page=page, kv_heads=kv_heads, group=group, head_dim=head_dim, dtype=dtype)
    m = pb.meta
    scale = 1 / math.sqrt(head_dim)
    out = paged_decode_attention(
        pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, scale, max_query_len=m.max_query_len,
        max_seq_len=m.max_seq_len, tree_mask=m.tree_mask, num_splits=num_splits, block_n=block_n,
    )
    ref = paged_attention_ref(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, scale, m.tree_mask)
    assert_close(out, ref)


def test_decode_fills_only_selected_sequences() -> None:
    pb = make_paged_batch([(5, 3, True), (20, 1, False), (2, 6, True)], page=16, kv_heads=1, group=3, head_dim=64,
                     dtype=torch.float32, seed=1)
    m = pb.meta
    out = torch.full_like(pb.q, float("nan"))
    seq_ids = torch.tensor([0, 2], dtype=torch.int32, device=pb.q.device)
    paged_decode_attention(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125,
                           max_query_len=6, max_seq_len=22, tree_mask=m.tree_mask, seq_ids=seq_ids, out=out)
    ref = paged_attention_ref(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125, m.tree_mask)
    assert_close(out[:3], ref[:3])
    assert out[3].isnan().all()  # sequence 1 was not asked for
    assert_close(out[4:], ref[4:])


def test_decode_names_a_tensor_on_another_device() -> None:
    pb = make_paged_batch([(5, 3, True)], page=16, kv_heads=1, group=3, head_dim=64, dtype=torch.float32, seed=1)
    m = pb.meta
    with pytest.raises(ValueError, match="block_tables is on meta"):
        paged_decode_attention(pb.q, pb.k, pb.v, m.block_tables.to("meta"), m.query_start, m.num_cached, 0.125,
                               max_query_len=3, max_seq_len=8, tree_mask=m.tree_mask)


def test_last_split_reads_to_the_end() -> None:
    """An understated max_seq_len (30 for a 44-token sequence) loses nothing: the last split runs on."""
    pb = make_paged_batch([(40, 4, True)], page=16, kv_heads=1, group=3, head_dim=64, dtype=torch.float32, seed=9)
    m = pb.meta
    out = paged_decode_attention(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125,
                                 max_query_len=4, max_seq_len=30, tree_mask=m.tree_mask, num_splits=2, block_n=16)
    ref = paged_attention_ref(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125, m.tree_mask)
    assert_close(out, ref)


def test_tree_mask_changes_the_result() -> None:
    """The tree is honoured: the same tokens as a chain attend differently."""
    pb = make_paged_batch([(10, 8, True)], page=16, kv_heads=1, group=1, head_dim=64, dtype=torch.float32, seed=3)
    m = pb.meta
    args = (pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125)
    tree = paged_decode_attention(*args, max_query_len=8, max_seq_len=18, tree_mask=m.tree_mask)
    chain = paged_decode_attention(*args, max_query_len=8, max_seq_len=18, tree_mask=None)
    is_chain_row = m.tree_mask[:, :8].equal(torch.ones(8, 8, dtype=torch.bool, device=m.tree_mask.device).tril())
    assert not is_chain_row and not torch.allclose(tree, chain)


@pytest.mark.parametrize("seqs, group", [([(0, 1, False), (37, 1, False), (3, 20, True)], 3),
                                         ([(16, 4, True), (70, 1, False)], 1),
                                         # the torch backend's decode paths: one token, equal, unequal lengths
                                         ([(37, 1, False)], 3), ([(37, 1, False)] * 3, 3),
                                         ([(5, 1, False), (40, 1, False)], 2),
                                         # decodes, trees and a chain interleaved: attended in two groups
                                         ([(100, 1, False), (3, 9, True), (50, 1, False), (20, 6, False)], 3),
                                         # short decodes apart from long ones, and apart from the tree
                                         ([(10, 1, False), (900, 1, False), (12, 1, False), (3, 9, True),
                                           (700, 1, False)], 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_matches_torch_backend(seqs: list[tuple[int, int, bool]], group: int, dtype: torch.dtype) -> None:
    pb = make_paged_batch(seqs, page=16, kv_heads=2, group=group, head_dim=64, dtype=dtype, seed=2)
    m = pb.meta
    backend = TorchAttentionBackend()
    plan = backend.plan(m)
    mixed = 1 in m.query_lens_host and max(m.query_lens_host) > 1
    groups = attention_groups(m.query_lens_host, m.seq_lens_host)
    assert (len(plan.parts) if isinstance(plan, SplitPlan) else 1) == len(groups)
    if mixed:
        assert len(groups) >= 2  # decoding sequences never padded to a tree's rows
    if max(m.seq_lens_host) >= 700:
        assert len(groups) == 3  # nor short decodes to a long one's keys
    expected = backend.attend(pb.q, KVLayerCache(pb.k, pb.v), plan, 0.125)
    if dtype != torch.float32:  # the reference attends in the input dtype: compare in fp32
        ref = paged_attention_ref(pb.q.float(), pb.k.float(), pb.v.float(), m.block_tables, m.query_start,
                                  m.num_cached, 0.125, m.tree_mask)
        torch.testing.assert_close(ref.to(dtype), expected, atol=1e-2, rtol=1e-2)
        return
    ref = paged_attention_ref(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125, m.tree_mask)
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=1e-5)


def test_split_heuristic() -> None:
    h100 = 132
    assert choose_num_splits(num_programs=8, max_kv_len=8192, num_sms=h100) == 16  # batch 1: split
    assert choose_num_splits(num_programs=8, max_kv_len=32768, num_sms=h100) == 32
    assert choose_num_splits(num_programs=64, max_kv_len=1024, num_sms=h100) == 2
    assert choose_num_splits(num_programs=512, max_kv_len=32768, num_sms=h100) == 1  # batch 64 fills the GPU
    assert choose_num_splits(num_programs=8, max_kv_len=600, num_sms=h100) == 1  # too short to split
    assert choose_num_splits(num_programs=8, max_kv_len=8192, num_sms=1) == 1  # interpreter


def test_block_m_covers_group() -> None:
    assert decode_block_m(1, 4) == 16  # one token of a 4-head group still fills tl.dot's 16 rows
    assert decode_block_m(8, 4) == 32
    assert decode_block_m(64, 8) == 64  # tiled over query tokens
    assert decode_block_m(1, 32) == 32


def test_rejects_bad_inputs() -> None:
    pb = make_paged_batch([(3, 2, False)], page=16, kv_heads=1, group=2, head_dim=64, dtype=torch.float32)
    m = pb.meta
    args = (pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125)
    with pytest.raises(ValueError, match="query tokens"):
        paged_decode_attention(pb.q, *args, max_query_len=MAX_VERIFY_QUERY + 1, max_seq_len=5)
    with pytest.raises(ValueError, match="q must be"):
        paged_decode_attention(pb.q.half(), *args, max_query_len=2, max_seq_len=5)
    with pytest.raises(ValueError, match="head_dim"):
        paged_decode_attention(pb.q[..., :32], *args, max_query_len=2, max_seq_len=5)
