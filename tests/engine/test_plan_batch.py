"""plan_batch's tree mask: what each new token may see among its sequence's new tokens."""
from __future__ import annotations

import torch

from engine.batch import SeqInput, plan_batch


def test_tree_mask_rows_are_ancestors_or_causal() -> None:
    """A tree's node sees its ancestors and itself; a chain's token (a prompt chunk, a decode) the
    tokens up to itself; columns past a sequence's own tokens are False."""
    tree = (-1, 0, 1, 0, 3)
    seqs = [SeqInput([1] * 3, 0, [0]), SeqInput([1] * 5, 4, [1], parents=tree), SeqInput([1], 7, [2])]
    mask = plan_batch(seqs, 16).attn.tree_mask
    want = torch.zeros(9, 5, dtype=torch.bool)
    want[0:3, :3] = torch.ones(3, 3, dtype=torch.bool).tril()
    for node, visible in enumerate([[0], [0, 1], [0, 1, 2], [0, 3], [0, 3, 4]]):
        want[3 + node, visible] = True
    want[8, 0] = True
    assert torch.equal(mask, want)
    assert plan_batch(seqs[:1] + seqs[2:], 16).attn.tree_mask is None  # no tree, no mask
