"""TritonAttentionBackend equals TorchAttentionBackend on the same planned metadata."""
from __future__ import annotations

import math
import random

import pytest
import torch

from engine.attention import get_backend
from engine.attention.base import AttentionBackend, KVLayerCache
from engine.attention.torch_backend import TorchAttentionBackend
from kernels.backend import TritonAttentionBackend
from kernels.paged_attention import MAX_VERIFY_QUERY
from tests.kernels.paged_data import PagedBatch, assert_close, make_paged_batch

BATCHES = [
    # (num_cached, num_new, is_tree) per sequence, page, kv_heads, group, head_dim, dtype, num_kv_splits
    pytest.param([(0, 70, False), (33, 1, False), (16, 4, True), (15, 16, True), (1, 1, False)], 16, 2, 3, 64,
                 torch.float32, None, id="mixed-prefill-decode-trees-f32"),
    pytest.param([(17, 1, False), (40, 33, True), (0, 1, False)], 16, 1, 7, 128, torch.float16, 2,
                 id="decode-verify-split2-f16"),
    pytest.param([(5, 100, False), (31, 8, False)], 8, 1, 1, 64, torch.float16, None, id="chains-no-tree-f16"),
    pytest.param([(20, MAX_VERIFY_QUERY + 6, True), (3, 2, True)], 16, 1, 3, 64, torch.float32, None,
                 id="long-tree-to-prefill-f32"),
]


def _run(backend: AttentionBackend, pb: PagedBatch, k_new: torch.Tensor, v_new: torch.Tensor,
         scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer of one step: write the step's K/V into a copy of the pool, then attend."""
    pool = pb.pool.clone()
    cache = KVLayerCache(pool[:, 1, 0], pool[:, 1, 1])
    plan = backend.plan(pb.meta)
    backend.write_kv(cache, k_new, v_new, plan)
    return backend.attend(pb.q, cache, plan, scale), pool


@pytest.mark.parametrize("seqs, page, kv_heads, group, head_dim, dtype, splits", BATCHES)
def test_backend_equals_torch_backend(seqs: list[tuple[int, int, bool]], page: int, kv_heads: int,
                                      group: int, head_dim: int, dtype: torch.dtype, splits: int | None) -> None:
    pb = make_paged_batch(seqs, page=page, kv_heads=kv_heads, group=group, head_dim=head_dim, dtype=dtype, seed=7)
    T = pb.meta.num_tokens
    gen = torch.Generator().manual_seed(8)
    k_new = torch.randn(T, kv_heads, head_dim, generator=gen).to(pb.q.device, dtype)
    v_new = torch.randn(T, kv_heads, head_dim, generator=gen).to(pb.q.device, dtype)
    scale = 1 / math.sqrt(head_dim)
    out, pool = _run(TritonAttentionBackend(num_kv_splits=splits), pb, k_new, v_new, scale)
    expected, expected_pool = _run(TorchAttentionBackend(), pb, k_new, v_new, scale)
    assert torch.equal(pool, expected_pool)
    assert_close(out, expected.to(dtype))


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_random_batches_equal_torch_backend(seed: int) -> None:
    rng = random.Random(seed)
    page = rng.choice([8, 16])
    seqs = [(rng.choice([0, 1, page - 1, page, page + 1, rng.randrange(70)]), rng.choice([1, 1, 4, 16, 33, 70]),
             rng.random() < 0.5) for _ in range(rng.randint(1, 4))]
    group, head_dim = rng.choice([1, 3, 7]), rng.choice([64, 128])
    dtype, splits = rng.choice([torch.float32, torch.float16]), rng.choice([None, 2, 3])
    pb = make_paged_batch(seqs, page=page, kv_heads=rng.choice([1, 2]), group=group, head_dim=head_dim, dtype=dtype,
                     seed=seed)
    out = TritonAttentionBackend(num_kv_splits=splits).attend(pb.q, KVLayerCache(pb.k, pb.v),
                                                              TritonAttentionBackend().plan(pb.meta), 0.1)
    torch_backend = TorchAttentionBackend()
    expected = torch_backend.attend(pb.q, KVLayerCache(pb.k, pb.v), torch_backend.plan(pb.meta), 0.1)
    assert_close(out, expected)


def test_backend_copy_slots_equals_torch_backend() -> None:
    pb = make_paged_batch([(10, 12, True)], page=8, kv_heads=2, group=1, head_dim=64, dtype=torch.float32)
    # an accepted path 0 -> 3 -> 7 of the tree moves to the slots right after the cached prefix
    slots = pb.meta.slot_mapping
    src, dst = slots[[0, 3, 7]], slots[[0, 1, 2]]
    pool, expected = pb.pool.clone(), pb.pool.clone()
    TritonAttentionBackend().copy_slots(pool, src, dst)
    TorchAttentionBackend().copy_slots(expected, src, dst)
    assert torch.equal(pool, expected) and not torch.equal(pool, pb.pool)


def test_selector_builds_triton_backend() -> None:
    assert get_backend("triton").name == "triton"
