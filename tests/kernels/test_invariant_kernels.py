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
from kernels.paged_attention import _INVARIANT_SPLIT_LEN, paged_decode_attention
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
TREE = (-1, 0, 1, 0, 3, 1, 5)  # nodes 0 -> 1 -> 2 form a chain at slots c, c + 1, c + 2


class _Cache:
    """A shared paged cache of random K/V and random query rows per (sequence, position)."""

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
def test_decode_attention_rows_do_not_depend_on_the_step(dtype: torch.dtype) -> None:
    long_ctx = _INVARIANT_SPLIT_LEN + 76  # split in two: the launch takes the split path
    cache = _Cache(dtype, [40, 150, long_ctx])
    alone = cache.attend([(0, 40, 1, None)])
    together = cache.attend([(0, 40, 1, None), (1, 150, len(TREE), TREE), (2, long_ctx, 1, None)])
    assert torch.equal(together[:1], alone)
    # each node of the tree's chain against the same token decoded alone behind its ancestors
    for depth in range(3):
        plain = cache.attend([(1, 150 + depth, 1, None)])
        assert torch.equal(together[1 + depth:2 + depth], plain), f"node at depth {depth}"
    # the split sequence: alone and beside the others
    assert torch.equal(together[-1:], cache.attend([(2, long_ctx, 1, None)]))
