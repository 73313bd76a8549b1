"""Random paged KV batches for the kernel tests, and a tolerance per dtype."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from engine.batch import AttentionMetadata, Batch, SeqInput, plan_batch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True, slots=True)
class PagedBatch:
    pool: torch.Tensor  # [num_blocks, num_layers, 2, block_size, KVH, D]
    k: torch.Tensor  # [num_blocks, block_size, KVH, D]: a strided view of one layer of the pool
    v: torch.Tensor
    q: torch.Tensor  # [T, H, D]
    batch: Batch

    @property
    def meta(self) -> AttentionMetadata:
        return self.batch.attn


def random_parents(n: int, rng: random.Random) -> list[int]:
    """A random tree over n new tokens: each parent is an earlier token or -1 (the cached context)."""
    return [rng.randrange(-1, i) for i in range(n)]


def make_paged_batch(
    seqs: Sequence[tuple[int, int, bool]],  # (num_cached, num_new, is_tree) per sequence
    *, page: int, kv_heads: int, group: int, head_dim: int, dtype: torch.dtype, seed: int = 0,
    num_layers: int = 2, spare_blocks: int = 3,
) -> PagedBatch:
    """Random K/V in a block-major pool (so the layer views are strided), scattered block tables,
    random q, and the metadata ``plan_batch`` builds for it."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    need = [-(-(c + n) // page) for c, n, _ in seqs]
    num_blocks = sum(need) + spare_blocks
    order = torch.randperm(num_blocks, generator=gen).tolist()
    inputs, used = [], 0
    for (cached, n, tree), nb in zip(seqs, need):
        table, used = order[used:used + nb], used + nb
        parents = random_parents(n, rng) if tree else None
        inputs.append(SeqInput(token_ids=[0] * n, num_cached=cached, block_table=table, parents=parents))
    batch = plan_batch(inputs, page, device=DEVICE)
    pool = torch.randn(num_blocks, num_layers, 2, page, kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    q = torch.randn(batch.attn.num_tokens, kv_heads * group, head_dim, generator=gen).to(DEVICE, dtype)
    layer = num_layers - 1
    return PagedBatch(pool=pool, k=pool[:, layer, 0], v=pool[:, layer, 1], q=q, batch=batch)


_TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float16: dict(atol=3e-3, rtol=3e-3),
              torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Same dtype and shape, values within the tolerance of the dtype."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref.float(), **_TOLERANCE[out.dtype])
