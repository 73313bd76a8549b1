"""The C++ greedy pick (kernels/cpu_greedy.cpp) against torch's ``max(dim=-1).indices``, bit for
bit: ties go to the first index, across vector lanes and in the scalar tail; NaN rows are torch's."""
from __future__ import annotations

import pytest
import torch

from engine.sampling import SamplingBatch, greedy_pick, sample
from engine.sampling_params import SamplingParams
from kernels import cpu_greedy

pytestmark = pytest.mark.skipif(not cpu_greedy.available(), reason="no C++ compiler")


@pytest.mark.parametrize("rows", [1, 3, 14, 144])
@pytest.mark.parametrize("vocab", [1, 15, 16, 17, 100, 49152])
def test_matches_torch(rows: int, vocab: int) -> None:
    gen = torch.Generator().manual_seed(rows * 1000 + vocab)
    x = torch.randn(rows, vocab, generator=gen)
    # ties: the row's max copied to later places (another lane, the tail), and bf16-rounded logits
    # where equal values are common
    for r in range(0, rows, 2):
        top = int(x[r].argmax())
        for j in (top + 1, top + 17, vocab - 1):
            if j < vocab:
                x[r, j] = x[r, top]
    x[1::3] = x[1::3].bfloat16().float()
    assert torch.equal(cpu_greedy.argmax_rows(x), x.max(dim=-1).indices)


def test_ties_special_rows_and_strides() -> None:
    x = torch.full((5, 40), -float("inf"))
    x[1, 33] = x[1, 7] = 2.0  # first of two maxima, in different lanes
    x[2, 39] = 1.0  # in the tail
    x[3, 12] = float("nan")  # torch's rule: the NaN wins
    x[4] = 0.0
    wide = torch.randn(5, 64)
    wide[:, :40] = x
    view = wide[:, :40]  # rows 64 apart
    expected = x.max(dim=-1).indices
    assert torch.equal(cpu_greedy.argmax_rows(view), expected)
    assert expected.tolist()[:3] == [0, 7, 39] and expected[3] == 12
    with pytest.raises(ValueError, match="fp32"):
        cpu_greedy.argmax_rows(x.double())


def test_sampler_picks_greedy_rows_as_torch() -> None:
    """sample() and greedy_pick (the kernel on CPU fp32) pick greedy rows, mixed with sampled
    rows, as torch's max does."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 1000, generator=gen)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=1)] * 3
    out = sample(logits, SamplingBatch.build(params, [1] * 6, list(range(6))))
    greedy = logits.max(dim=-1).indices
    assert torch.equal(out.tokens[0::2], greedy[0::2])
    assert torch.equal(greedy_pick(logits), greedy)
