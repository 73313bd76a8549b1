"""Row-invariant kernels (what keeps 16-bit lookahead exact on a GPU): each row's bits must not
depend on what else the call holds. Checked under the interpreter here (and compiled where a GPU is
lent): against the torch references over shapes, then row by row, bit for bit."""
from __future__ import annotations

import math

import pytest
import torch

from engine.batch import SeqInput, plan_batch
from kernels.invariant_matmul import BLOCK_M, invariant_linear, invariant_linear_ref
from kernels.invariant_rms_norm import invariant_rms_norm, invariant_rms_norm_ref
from kernels.paged_attention import _INVARIANT_SPLIT_LEN, paged_attention_ref, paged_decode_attention, token_paths
from tests.kernels.paged_data import DEVICE, assert_close

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m, n, k", [(1, 70, 96), (5, 64, 64), (BLOCK_M + 6, 130, 200)])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_linear_matches_reference_and_rows_are_invariant(m: int, n: int, k: int, dtype: torch.dtype,
                                                         residual: bool) -> None:
    gen = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=gen).to(DEVICE, dtype)
    w = (torch.randn(n, k, generator=gen) * 0.1).to(DEVICE, dtype)
    res = torch.randn(m, n, generator=gen).to(DEVICE, dtype) if residual else None
    out = invariant_linear(x, w, None if res is None else res.clone())
    assert_close(out, invariant_linear_ref(x, w, res))
    for i in sorted({0, m // 2, m - 1}):
        alone = invariant_linear(x[i:i + 1], w, None if res is None else res[i:i + 1].clone())
        assert torch.equal(out[i:i + 1], alone), f"row {i} of {m}"


def test_linear_checks_its_arguments() -> None:
    x = torch.zeros(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="need"):
        invariant_linear(x, torch.zeros(4, 6, device=DEVICE))
    with pytest.raises(ValueError, match="share a dtype"):
        invariant_linear(x, torch.zeros(4, 8, device=DEVICE, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="residual"):
        invariant_linear(x, torch.zeros(4, 8, device=DEVICE), residual=torch.zeros(2, 5, device=DEVICE))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, hidden", [(1, 64), (7, 576), (3, 100)])
def test_rms_norm_matches_reference_and_rows_are_invariant(rows: int, hidden: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(rows + hidden)
    x = torch.randn(rows, hidden, generator=gen).to(DEVICE, dtype)
    w = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(DEVICE, dtype)
    out = invariant_rms_norm(x, w, 1e-5)
    assert_close(out, invariant_rms_norm_ref(x, w, 1e-5))
    for i in range(rows):
        assert torch.equal(out[i:i + 1], invariant_rms_norm(x[i:i + 1], w, 1e-5))


# --- attention: a decode beside others, and a tree's nodes against plain decoding ---------------

PAGE, KVH, GROUP, D = 16, 3, 3, 64
TREE = (-1, 0, 1, 0, 3, 1, 5)  # two branches from the root, one forking below node 1


def _path(node: int) -> list[int]:
    """The node's ancestors and itself, root first."""
    path = [node]
    while TREE[path[0]] >= 0:
        path.insert(0, TREE[path[0]])
    return path


class _Cache:
    """A paged cache of random K/V and random query rows per (sequence, slot)."""

    def __init__(self, dtype: torch.dtype, contexts: list[int]) -> None:
        gen = torch.Generator().manual_seed(0)
        self.tables, used = [], 0
        for ctx in contexts:
            nb = -(-(ctx + len(TREE)) // PAGE)
            self.tables.append(list(range(used, used + nb))[::-1])  # scattered: reversed block order
            used += nb
        self.k = torch.randn(used, PAGE, KVH, D, generator=gen).to(DEVICE, dtype)
        self.v = torch.randn(used, PAGE, KVH, D, generator=gen).to(DEVICE, dtype)
        self.q = torch.randn(len(contexts), max(contexts) + len(TREE), KVH * GROUP, D, generator=gen).to(DEVICE, dtype)
        self.tree = self.k.clone(), self.v.clone(), self.q.clone()  # as the tree step finds them

    def slot(self, seq: int, pos: int) -> tuple[int, int]:
        return self.tables[seq][pos // PAGE], pos % PAGE

    def plain_path(self, seq: int, ctx: int, node: int) -> None:
        """Lays the node's path out as plain decoding would have: its ancestors' K/V (and its own)
        at slots ctx, ctx + 1, ..., its query at the last of them (a copy of the tree's)."""
        path = _path(node)
        k, v, q = self.tree[0], self.tree[1], self.tree[2][seq, ctx + node]
        for depth, n in enumerate(path):
            self.k[self.slot(seq, ctx + depth)] = k[self.slot(seq, ctx + n)]
            self.v[self.slot(seq, ctx + depth)] = v[self.slot(seq, ctx + n)]
        self.q[seq, ctx + len(path) - 1] = q

    def attend(self, seqs: list[tuple[int, int, int, tuple[int, ...] | None]]) -> torch.Tensor:
        """seqs: (sequence, num_cached, new tokens, tree parents or None); the new tokens' queries
        are the sequence's rows at num_cached + i (slot order)."""
        inputs = [SeqInput([0] * n, c, self.tables[s], parents=p) for s, c, n, p in seqs]
        m = plan_batch(inputs, PAGE, device=DEVICE).attn
        q = torch.cat([self.q[s, c:c + n] for s, c, n, _ in seqs])
        return paged_decode_attention(q, self.k, self.v, m.block_tables, m.query_start, m.num_cached,
                                      1 / math.sqrt(D), max_query_len=m.max_query_len, max_seq_len=m.max_seq_len,
                                      tree_mask=m.tree_mask, row_invariant=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_attention_rows_are_plain_decoding(dtype: torch.dtype) -> None:
    """A decode beside a tree and a split long context is the decode alone; every node of the tree,
    on either branch, is the same token decoded alone after its ancestors (their K/V at consecutive
    slots, as plain decoding leaves them); and the tree agrees with the torch reference."""
    long_ctx = _INVARIANT_SPLIT_LEN + 76  # split in two: the launch takes the split path
    cache = _Cache(dtype, [40, 150, long_ctx])
    batch = [(0, 40, 1, None), (1, 150, len(TREE), TREE), (2, long_ctx, 1, None)]
    together = cache.attend(batch)
    m = plan_batch([SeqInput([0] * n, c, cache.tables[s], parents=p) for s, c, n, p in batch], PAGE, DEVICE).attn
    q = torch.cat([cache.q[s, c:c + n] for s, c, n, _ in batch])
    ref = paged_attention_ref(q, cache.k, cache.v, m.block_tables, m.query_start, m.num_cached, 1 / math.sqrt(D),
                              tree_mask=m.tree_mask)
    assert_close(together, ref)
    assert torch.equal(together[:1], cache.attend([(0, 40, 1, None)]))
    assert torch.equal(together[-1:], cache.attend([(2, long_ctx, 1, None)]))
    for node in range(len(TREE)):
        cache.plain_path(1, 150, node)
        depth = len(_path(node)) - 1
        plain = cache.attend([(1, 150 + depth, 1, None)])
        assert torch.equal(together[1 + node:2 + node], plain), f"node {node} (depth {depth})"


def test_token_paths_follow_parents() -> None:
    """A tree's node: its ancestors and itself by depth; a chain's token t: 0..t."""
    seqs = [SeqInput([0] * len(TREE), 5, [0], parents=TREE), SeqInput([0] * 3, 2, [1])]
    m = plan_batch(seqs, PAGE, DEVICE).attn
    path, depth = token_paths(m.query_start, m.tree_mask, len(TREE) + 3, len(TREE))
    for node in range(len(TREE)):
        want = _path(node)
        assert depth[node] == len(want) - 1 and path[node, :len(want)].tolist() == want
    assert depth[len(TREE):].tolist() == [0, 1, 2]
    assert path[len(TREE) + 2, :3].tolist() == [0, 1, 2]
    chain_path, chain_depth = token_paths(m.query_start, None, len(TREE) + 3, len(TREE))
    assert chain_depth.tolist() == list(range(len(TREE))) + [0, 1, 2]
    assert chain_path[4, :5].tolist() == [0, 1, 2, 3, 4]
