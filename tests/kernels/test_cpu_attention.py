"""The C++ CPU attention kernel against its torch reference, over parametrized shapes.

Row invariance (a tree token attends as when decoded alone, bit for bit) is checked beside the
torch backend's in tests/engine/test_batch_invariance.py; the engine runs it by default on CPU.
"""
from __future__ import annotations

import math

import pytest
import torch

from engine.attention.cpu_backend import CpuAttentionBackend, CpuKernelPlan
from engine.attention.selector import get_backend
from engine.batch import SeqInput, plan_batch
from engine.engine_config import MAX_DRAFT_DEPTH
from kernels import cpu_attention
from kernels.cpu_attention import PagedQuery, cpu_paged_attention
from kernels.paged_attention import paged_attention_ref
from tests.kernels.paged_data import assert_close, make_paged_batch

CASES = [
    # seqs (num_cached, num_new, is_tree), page, kv_heads, group, head_dim
    pytest.param([(0, 1, False), (37, 1, False), (3, 20, True)], 16, 2, 3, 64, id="decode-and-tree"),
    pytest.param([(16, 16, True), (0, 33, True), (47, 4, False)], 16, 1, 3, 128, id="trees-d128"),
    pytest.param([(9, 4, False), (1, 16, False), (7, 1, False)], 8, 1, 7, 64, id="chains-page8-g7"),
    pytest.param([(63, 1, False), (65, 4, True), (100, 33, True)], 5, 2, 1, 64, id="page5-g1"),  # blocks not tiles
    pytest.param([(0, 40, False), (200, 1, False)], 32, 3, 3, 64, id="prefill-chunks"),  # several 8-token chunks
    # a prefill after a prefix hit: causal rows whose visible keys end mid-tile, past unaligned cached keys
    pytest.param([(21, 45, False), (48, 20, False)], 16, 2, 3, 64, id="prefix-hit-chunks"),
    pytest.param([(30, 9, True), (5, 1, False)], 16, 2, 2, 80, id="d80-generic-paths"),  # head_dim not 16k
    pytest.param([(70, 3, True)], 16, 2, 2, 96, id="d96"),
    pytest.param([(1500, 1, False), (2100, 17, True)], 16, 3, 3, 64, id="long"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seqs, page, kv_heads, group, head_dim", CASES)
def test_matches_reference(seqs: list[tuple[int, int, bool]], page: int, kv_heads: int, group: int, head_dim: int,
                           dtype: torch.dtype) -> None:
    pb = make_paged_batch(seqs, page=page, kv_heads=kv_heads, group=group, head_dim=head_dim, dtype=dtype, seed=7)
    m = pb.meta
    scale = 1 / math.sqrt(head_dim)
    out = cpu_paged_attention(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, scale, m.tree_mask)
    # the reference attends in fp32 from the same 16-bit inputs, so both round once, at the end
    ref = paged_attention_ref(pb.q.float(), pb.k.float(), pb.v.float(), m.block_tables, m.query_start, m.num_cached,
                              scale, m.tree_mask).to(dtype)
    assert_close(out, ref)
    if dtype == torch.bfloat16 and cpu_attention.amx() and head_dim % 32 == 0:  # the served path took AMX tiles:
        pq = PagedQuery.build(m.block_tables, m.query_start, m.num_cached, m.tree_mask)  # the other is close too
        assert_close(cpu_attention.run(pb.q, pb.k, pb.v, pq, scale, use_amx=False), ref)
    # a 16-bit q is read and the output written in its own dtype: the same bits as an fp32 q (exact)
    # and an fp32 output rounded by torch; a bf16 q scored by VDPBF16PS rounds its scores' sums
    # otherwise than the fp32 FMA chain an fp32 q takes
    wide = cpu_paged_attention(pb.q.float(), pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, scale, m.tree_mask)
    assert wide.dtype == torch.float32
    if dtype == torch.bfloat16 and cpu_attention.bf16_dot() and head_dim % 32 == 0:
        assert_close(out, wide.to(dtype))
    else:
        assert torch.equal(out, wide.to(dtype))


WINDOW_CASES = [
    # seqs, page, kv_heads, group, head_dim, sliding window
    pytest.param([(40, 1, False), (70, 9, True), (5, 3, False)], 16, 2, 2, 64, 24, id="decode-tree-w24"),
    pytest.param([(0, 40, False), (100, 17, True)], 16, 1, 3, 128, 20, id="prefill-chunks-w20"),
    pytest.param([(33, 1, False), (90, 12, True)], 5, 2, 1, 80, 7, id="page5-d80-w7"),
    pytest.param([(60, 20, True), (16, 1, False)], 16, 2, 2, 64, 3, id="window-inside-the-tree"),
    pytest.param([(20, 3, True)], 16, 2, 2, 64, 500, id="window-cuts-nothing"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seqs, page, kv_heads, group, head_dim, window", WINDOW_CASES)
def test_sliding_window_matches_reference(seqs: list[tuple[int, int, bool]], page: int, kv_heads: int, group: int,
                                          head_dim: int, window: int, dtype: torch.dtype) -> None:
    """A query at position p (a tree node's by depth) sees only keys at positions > p - window."""
    pb = make_paged_batch(seqs, page=page, kv_heads=kv_heads, group=group, head_dim=head_dim, dtype=dtype, seed=11)
    m = pb.meta
    scale = 1 / math.sqrt(head_dim)
    args = (m.block_tables, m.query_start, m.num_cached, scale, m.tree_mask)
    out = cpu_paged_attention(pb.q, pb.k, pb.v, *args, m.positions, window)
    ref = paged_attention_ref(pb.q.float(), pb.k.float(), pb.v.float(), *args, m.positions, window).to(dtype)
    assert_close(out, ref)
    unwindowed = cpu_paged_attention(pb.q, pb.k, pb.v, *args)
    assert torch.equal(out, unwindowed) == (window >= 500)  # the window is applied, and only where it cuts


def test_a_sequence_alone_equals_it_in_a_batch_and_a_hidden_key_changes_only_its_row() -> None:
    """A sequence's output does not depend on the other sequences of the call (each is computed
    alone here), bit for bit, and a tree mask that hides a key changes its rows."""
    seqs = [(40, 1, False), (33, 12, True), (0, 19, False), (90, 5, True)]
    pb = make_paged_batch(seqs, page=16, kv_heads=2, group=3, head_dim=64, dtype=torch.bfloat16, seed=3)
    m = pb.meta
    whole = cpu_paged_attention(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125, m.tree_mask)
    for b in range(len(seqs)):
        rows, sub = m.select([b])
        alone = cpu_paged_attention(pb.q[rows], pb.k, pb.v, sub.block_tables, sub.query_start, sub.num_cached, 0.125,
                                    sub.tree_mask)
        assert torch.equal(alone, whole[rows]), f"sequence {b} differs when attended alone"
    hidden = m.tree_mask.clone()
    row = int(m.query_start[1]) + 5  # sequence 1's sixth token: hide its parent chain's first node
    first_visible = int(hidden[row].nonzero()[0])
    hidden[row, first_visible] = False
    changed = cpu_paged_attention(pb.q, pb.k, pb.v, m.block_tables, m.query_start, m.num_cached, 0.125, hidden)
    assert not torch.equal(changed[row], whole[row])
    others = torch.ones(whole.shape[0], dtype=torch.bool)
    others[row] = False
    assert torch.equal(changed[others], whole[others])


def test_rejects_bad_inputs() -> None:
    pb = make_paged_batch([(20, 3, True)], page=16, kv_heads=2, group=2, head_dim=64, dtype=torch.float32)
    m = pb.meta
    args = (m.block_tables, m.query_start, m.num_cached, 0.125, m.tree_mask)
    with pytest.raises(ValueError, match="kv heads"):
        cpu_paged_attention(pb.q[:, :3], pb.k, pb.v, *args)
    with pytest.raises(ValueError, match="equal strides"):
        cpu_paged_attention(pb.q, pb.k, pb.v[:, :8], *args)
    with pytest.raises(ValueError, match="not supported"):
        cpu_paged_attention(pb.q.double(), pb.k.double(), pb.v.double(), *args)
    with pytest.raises(ValueError, match="int64"):
        cpu_paged_attention(pb.q, pb.k, pb.v, m.block_tables.int(), *args[1:])
    with pytest.raises(ValueError, match="tree_mask"):
        cpu_paged_attention(pb.q, pb.k, pb.v, *args[:-1], m.tree_mask[:-1])
    with pytest.raises(ValueError, match="block_tables is on meta"):
        PagedQuery.build(m.block_tables.to("meta"), m.query_start, m.num_cached)
    with pytest.raises(ValueError, match="q is on meta"):
        cpu_paged_attention(pb.q.to("meta"), pb.k, pb.v, *args)
    with pytest.raises(ValueError, match="tokens"):
        cpu_attention.run(pb.q[:2], pb.k, pb.v, PagedQuery.build(*args[:3], m.tree_mask), 0.125)
    with pytest.raises(ValueError, match="q must be float32 or the cache's dtype"):
        cpu_paged_attention(pb.q.half(), pb.k.bfloat16(), pb.v.bfloat16(), *args)
    with pytest.raises(ValueError, match="needs positions"):
        cpu_paged_attention(pb.q, pb.k, pb.v, *args, None, 8)
    with pytest.raises(ValueError, match="sliding_window must be"):
        cpu_paged_attention(pb.q, pb.k, pb.v, *args, m.positions, 0)


@pytest.mark.skipif(not cpu_attention.amx(), reason="the AMX path refuses trees deeper than AMX_TAIL; others take any")
def test_amx_refuses_a_tree_deeper_than_its_exact_tail() -> None:
    """A node 39 deep behind 30 cached keys: its tiled keys (up to 32) would include the step's
    first two tokens, one not its ancestor, where plain decoding tiles its compacted path: refused
    with a clear error, not a silently different row. The same tree 32 deep is attended."""
    def batch(depth: int) -> tuple[torch.Tensor, PagedQuery]:
        parents = [-1, -1, *range(1, depth)]  # a lone root, then a chain of `depth` nodes
        seqs = [SeqInput(token_ids=[0] * len(parents), num_cached=30, block_table=list(range(8)), parents=parents)]
        m = plan_batch(seqs, 16).attn
        return torch.randn(len(parents), 9, 64).bfloat16(), PagedQuery.build(m.block_tables, m.query_start,
                                                                              m.num_cached, m.tree_mask)
    assert cpu_attention._library().grove_attention_amx_tail() == cpu_attention.AMX_TAIL >= MAX_DRAFT_DEPTH
    pool = torch.randn(8, 16, 3, 64).bfloat16()
    q, pq = batch(cpu_attention.AMX_TAIL)
    assert cpu_attention.run(q, pool, pool, pq, 0.125).isfinite().all()
    q, pq = batch(39)
    with pytest.raises(ValueError, match="deeper than 32"):
        cpu_attention.run(q, pool, pool, pq, 0.125)


def test_builds_here_and_is_the_cpu_default() -> None:
    """The machine has a C++ compiler, so the CPU default is the kernel, not the fp64 torch path."""
    assert cpu_attention.available(), "the CPU attention kernel did not build (see the log)"
    assert cpu_attention.library_path().exists()
    assert isinstance(get_backend("auto", "cpu"), CpuAttentionBackend)
    windowed = get_backend("auto", "cpu", sliding_window=8)  # the kernel has the window mask
    assert windowed.name == "cpu"
    near = windowed.plan(plan_batch([SeqInput([1, 2], 5, [0])], 16, sliding_window=8).attn)
    far = windowed.plan(plan_batch([SeqInput([1, 2], 20, [0, 1])], 16, sliding_window=8).attn)
    assert isinstance(near, CpuKernelPlan) and isinstance(far, CpuKernelPlan)
    assert near.query.window == 0 and far.query.window == 8  # passed only to a step it cuts
    with pytest.raises(ValueError, match="CPU"):
        get_backend("cpu", "cuda")
