"""One forward serves every phase: chunked prefill, mixed batches and trees agree with the plain case."""
from __future__ import annotations

import random
from typing import Any

import torch

from engine.batch import SeqInput, plan_batch
from engine.kv_pool import KVPool
from engine.sampling_params import SamplingParams


def _pool(engine: Any, blocks: int = 64) -> KVPool:
    return KVPool(engine.layout, blocks)


def test_chunked_prefill_matches_one_prefill(engine: Any) -> None:
    rng = random.Random(1)
    ids = [rng.randrange(10, 40000) for _ in range(100)]
    table = list(range(7))
    one = _pool(engine, 8)
    whole = engine.model.run(plan_batch([SeqInput(ids, 0, table)], 16), one)
    three = _pool(engine, 8)
    cuts = [0, 37, 70, 100]  # chunk edges off block boundaries
    for a, b in zip(cuts, cuts[1:]):
        last = engine.model.run(plan_batch([SeqInput(ids[a:b], a, table)], 16), three)
    n_blocks = -(-100 // 16)
    # compare only the 100 written token slots
    got = three.data[:n_blocks].transpose(1, 3).reshape(n_blocks * 16, -1)[:100]
    want = one.data[:n_blocks].transpose(1, 3).reshape(n_blocks * 16, -1)[:100]
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert torch.allclose(last, whole, atol=1e-3)
    assert last.argmax() == whole.argmax()


def test_batched_decode_matches_each_alone(engine: Any) -> None:
    rng = random.Random(2)
    prompts = [[rng.randrange(10, 40000) for _ in range(n)] for n in (3, 17, 40, 64, 5, 90, 33, 16)]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    together = engine.generate(prompts, params)
    for p, out in zip(prompts, together):
        alone = engine.generate([p], params)[0]
        assert alone.output_ids == out.output_ids


def test_tree_logits_match_separate_chains(engine: Any) -> None:
    """A token tree over a cached prefix gives each node the logits of its own root-to-node chain."""
    rng = random.Random(3)
    prefix = [rng.randrange(10, 40000) for _ in range(21)]
    # tree:  0 -> 1 -> 2,   0 -> 3,   4 (second root), 1 -> 5
    tree_tokens = [rng.randrange(10, 40000) for _ in range(6)]
    parents = [-1, 0, 1, 0, -1, 1]
    pool = _pool(engine, 8)
    table = [0, 1, 2]
    engine.model.run(plan_batch([SeqInput(prefix, 0, table)], 16), pool)
    tree_logits = engine.model.run(
        plan_batch([SeqInput(tree_tokens, len(prefix), table, parents=parents, logits="all")], 16), pool
    )
    for node in range(len(tree_tokens)):
        chain, n = [], node
        while n >= 0:
            chain.append(tree_tokens[n])
            n = parents[n]
        chain.reverse()
        ref_pool = _pool(engine, 8)
        ref = engine.model.run(plan_batch([SeqInput(prefix + chain, 0, table)], 16), ref_pool)
        assert torch.allclose(tree_logits[node], ref[0], atol=1e-3), f"node {node}"


def test_tree_in_mixed_batch_with_prefill_and_decode(engine: Any) -> None:
    """A tree sequence, a decode token and a prefill chunk in one step; each as if alone."""
    rng = random.Random(4)
    a = [rng.randrange(10, 40000) for _ in range(30)]
    b = [rng.randrange(10, 40000) for _ in range(19)]
    c = [rng.randrange(10, 40000) for _ in range(25)]
    pool = _pool(engine, 16)
    ta, tb, tc = [0, 1, 2], [3, 4], [5, 6]
    engine.model.run(plan_batch([SeqInput(a[:27], 0, ta), SeqInput(b[:18], 0, tb)], 16), pool)
    mixed = engine.model.run(
        plan_batch(
            [
                SeqInput(a[27:], 27, ta, parents=[-1, 0, 0], logits="all"),  # tree: a27 -> (a28 | a29)
                SeqInput(b[18:], 18, tb),  # one decode token
                SeqInput(c, 0, tc),  # a prefill
            ],
            16,
        ),
        pool,
    )
    def alone(ids: list[int]) -> torch.Tensor:
        return engine.model.run(plan_batch([SeqInput(ids, 0, [0, 1, 2])], 16), _pool(engine, 4))[0]

    assert torch.allclose(mixed[0], alone(a[:28]), atol=1e-3)
    assert torch.allclose(mixed[1], alone(a[:29]), atol=1e-3)
    assert torch.allclose(mixed[2], alone(a[:28] + [a[29]]), atol=1e-3)
    assert torch.allclose(mixed[3], alone(b), atol=1e-3)
    assert torch.allclose(mixed[4], alone(c), atol=1e-3)
