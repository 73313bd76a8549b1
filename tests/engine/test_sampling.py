"""Sampling: pure functions over logits; seeds reproduce; filters never leak tokens."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidRequestError
from engine.sampling import SamplingBatch, apply_penalties, sample, top_k_lowest_first, uniform_draws
from engine.sampling_params import SamplingParams


def _batch(params: list[SamplingParams], seeds: list[int], positions: list[int]) -> SamplingBatch:
    return SamplingBatch.build(params, seeds, positions, [[]] * len(params), [[]] * len(params))


def test_same_seed_same_tokens_different_seed_differs() -> None:
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    p = SamplingParams(temperature=1.0)
    a = sample(logits, _batch([p] * 4, [7, 7, 7, 7], [1, 2, 3, 4])).tokens
    b = sample(logits, _batch([p] * 4, [7, 7, 7, 7], [1, 2, 3, 4])).tokens
    assert torch.equal(a, b)
    draws = {tuple(sample(logits, _batch([p] * 4, [s] * 4, [1, 2, 3, 4])).tokens.tolist()) for s in range(20)}
    assert len(draws) > 10


def test_counter_based_draws_are_uniform() -> None:
    """Draws over many (seed, position) pairs: mean and a coarse histogram of Uniform(0, 1)."""
    seeds = torch.arange(500).repeat_interleave(500)
    positions = torch.arange(500).repeat(500)
    u = uniform_draws(seeds, positions)
    assert abs(u.mean().item() - 0.5) < 0.005
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.01


def test_sampled_frequencies_follow_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)
    p = SamplingParams(temperature=1.0)
    toks = sample(logits, _batch([p] * 4000, list(range(4000)), [5] * 4000)).tokens
    freq = torch.bincount(toks, minlength=4).float() / 4000
    assert torch.allclose(freq, logits[0].softmax(-1), atol=0.03), freq


def test_greedy_rows_take_argmax_in_mixed_batch() -> None:
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0), SamplingParams(temperature=0.0)]
    out = sample(logits, _batch(params, [1, 2, 3], [0, 0, 0])).tokens
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**40),
    top_k=st.integers(0, 50),
    top_p=st.floats(0.05, 1.0),
    min_p=st.floats(0.0, 0.5),
    temperature=st.floats(0.1, 3.0),
)
def test_filters_never_emit_outside_allowed_set(seed: int, top_k: int, top_p: float, min_p: float, temperature: float) -> None:
    gen = torch.Generator().manual_seed(seed % 2**31)
    logits = torch.randn(8, 300, generator=gen) * 3
    p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    toks = sample(logits, _batch([p] * 8, [seed + i for i in range(8)], list(range(8)))).tokens
    for row, tok in zip(logits, toks.tolist()):
        probs = (row / temperature).softmax(-1)
        order = probs.argsort(descending=True)
        rank = (order == tok).nonzero().item()
        if top_k > 0:
            assert rank < top_k
        mass_before = probs[order[:rank]].sum().item()
        assert rank == 0 or mass_before < top_p + 1e-6
        assert probs[tok] >= min_p * probs.max() - 1e-7


def test_penalties_change_the_choice() -> None:
    logits = torch.tensor([[5.0, 4.9, 0.0]])
    rep = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    b = SamplingBatch.build([rep], [0], [0], [[0]], [[]])
    assert sample(logits, b).tokens.item() == 1  # token 0 was in the prompt: 5/2 < 4.9
    freq = SamplingParams(temperature=0.0, frequency_penalty=1.0)
    b = SamplingBatch.build([freq], [0], [0], [[]], [[1, 0]])
    assert sample(logits, b).tokens.item() == 0
    b = SamplingBatch.build([freq], [0], [0], [[]], [[0, 0]])
    assert sample(logits, b).tokens.item() == 1


def test_logprobs_are_raw_model_logprobs() -> None:
    logits = torch.randn(2, 100, generator=torch.Generator().manual_seed(3))
    p = SamplingParams(temperature=0.0, logprobs=3)
    out = sample(logits, _batch([p, p], [0, 0], [0, 0]))
    ref = logits.log_softmax(-1)
    assert torch.allclose(out.logprobs, ref.max(-1).values)
    assert torch.equal(out.top_ids, ref.topk(3).indices)


def test_engine_seeded_sampling_is_reproducible(engine: Any) -> None:
    prompt = engine.tokenizer("Once upon a time")["input_ids"]
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True)
    a = engine.generate([prompt], p)[0].output_ids
    b = engine.generate([prompt, prompt[:3]], p)[0].output_ids  # other batch company, same output
    c = engine.generate([prompt], SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=12, ignore_eos=True))[0]
    assert a == b
    assert c.output_ids != a


def test_logit_bias_moves_the_pick_and_bans_with_minus_100() -> None:
    logits = torch.randn(2, 300, generator=torch.Generator().manual_seed(3))
    top = int(logits[0].argmax())
    params = [SamplingParams(temperature=0.0, logit_bias=((7, 100.0),)),
              SamplingParams(temperature=0.0, logit_bias=((top, -100.0),))]
    out = sample(logits, _batch(params, [0, 0], [5, 5])).tokens.tolist()
    assert out[0] == 7
    assert out[1] != top and out[1] == int(logits[1].clone().index_fill_(0, torch.tensor([top]), -1e9).argmax())
    # a sampled row never draws a banned token
    banned = SamplingParams(temperature=1.0, logit_bias=tuple((t, -100.0) for t in range(299)))
    draws = sample(logits[:1].repeat(200, 1), _batch([banned] * 200, list(range(200)), [5] * 200)).tokens
    assert set(draws.tolist()) == {299}


def test_min_tokens_bans_stop_tokens_only_before_the_minimum() -> None:
    """Row positions 3, 4, 5 behind a 3-token prompt have 0, 1, 2 output tokens before them: with
    min_tokens=2 the stop tokens are banned at the first two only (as a lookahead tree's rows are)."""
    logits = torch.zeros(3, 50)
    logits[:, 9] = 5.0  # the stop token is everyone's favourite
    logits[:, 4] = 4.0
    p = SamplingParams(temperature=0.0, min_tokens=2)
    batch = SamplingBatch.build([p] * 3, [0] * 3, [3, 4, 5], [[1, 2, 3]] * 3, [[]] * 3, [{9, 11}] * 3)
    assert sample(logits, batch).tokens.tolist() == [4, 4, 9]
    # the raw distribution's logprobs are reported, as without min_tokens
    lp = sample(logits, SamplingBatch.build([dataclasses.replace(p, logprobs=1)] * 3, [0] * 3, [3, 4, 5],
                                            [[1, 2, 3]] * 3, [[]] * 3, [{9}] * 3))
    assert lp.top_ids is not None and lp.top_ids[:, 0].tolist() == [9, 9, 9]


def test_logit_bias_and_min_tokens_are_validated() -> None:
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)
    with pytest.raises(InvalidRequestError, match="logit_bias"):
        SamplingParams(logit_bias=((3, 101.0),))
    with pytest.raises(InvalidRequestError, match="logit_bias"):
        SamplingParams(logit_bias=((-1, 1.0),))
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        SamplingParams(logit_bias=((5000, 1.0),)).check_vocab(5000)


@pytest.mark.parametrize("rows,vocab,k", [(1, 50, 1), (7, 300, 5), (33, 2000, 20), (4, 49152, 8)])
def test_top_logprobs_put_equal_values_in_id_order_whatever_shares_the_call(rows: int, vocab: int, k: int) -> None:
    """Top logprobs list equal values by id (lowest first, as greedy picks), so a row gets the same
    list alone, beside others, or under a larger top-n asked by another row of its step: topk's own
    order of equals changed with k (the engine fuzz caught a request's top-1 id differ from alone's)."""
    x = (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(rows)) * 2).round() / 2  # many ties
    values, ids = top_k_lowest_first(x, k)
    want = x.sort(dim=-1, descending=True, stable=True)
    assert torch.equal(values, want.values[:, :k]) and torch.equal(ids, want.indices[:, :k])
    for r in range(rows):
        for n in (1, k):
            alone_values, alone_ids = top_k_lowest_first(x[r : r + 1], n)
            assert alone_ids[0].tolist() == ids[r, :n].tolist()
            assert alone_values[0].tolist() == values[r, :n].tolist()


def _dense_penalties(logits: torch.Tensor, params: list[SamplingParams], prompts: list[list[int]],
                     outputs: list[list[int]]) -> torch.Tensor:
    """The readable reference: counts over every row's whole vocabulary."""
    vocab = logits.shape[-1]

    def counts(rows: list[list[int]]) -> torch.Tensor:
        c = torch.zeros(len(rows), vocab)
        for i, row in enumerate(rows):
            c[i].index_add_(0, torch.tensor(row, dtype=torch.long), torch.ones(len(row)))
        return c

    out_counts = counts(outputs)
    seen = (out_counts + counts(prompts)) > 0
    rep = torch.tensor([p.repetition_penalty for p in params])[:, None]
    logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
    logits = logits - torch.tensor([p.frequency_penalty for p in params])[:, None] * out_counts
    return logits - torch.tensor([p.presence_penalty for p in params])[:, None] * (out_counts > 0).float()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_penalties_on_each_rows_tokens_equal_the_dense_reference(data: st.DataObject) -> None:
    """Sequences of several rows (a tree's, sharing their prompt and output objects, each with its
    own draft path), rows without penalties, banned (-inf) logits, negative penalties: the same bits
    as counting over the whole vocabulary with each path appended to its row's output."""
    vocab = data.draw(st.integers(2, 60))
    token = st.integers(0, vocab - 1)
    params, prompts, outputs, paths = [], [], [], []
    for _ in range(data.draw(st.integers(1, 4))):
        p = SamplingParams(temperature=0.0, repetition_penalty=data.draw(st.sampled_from([1.0, 0.8, 1.3])),
                           frequency_penalty=data.draw(st.sampled_from([0.0, -0.5, 1.0])),
                           presence_penalty=data.draw(st.sampled_from([0.0, 1.5, -2.0])))
        prompt, output = data.draw(st.lists(token, max_size=8)), data.draw(st.lists(token, max_size=8))
        for _ in range(data.draw(st.integers(1, 4))):
            params.append(p)
            prompts.append(prompt)
            outputs.append(output)
            paths.append(data.draw(st.lists(token, max_size=3)))
    n = len(params)
    logits = torch.randn(n, vocab, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    logits[torch.rand(n, vocab, generator=torch.Generator().manual_seed(1)) < 0.1] = float("-inf")
    got = apply_penalties(logits, SamplingBatch.build(params, [0] * n, [0] * n, prompts, outputs,
                                                      draft_paths=paths))
    want = _dense_penalties(logits, params, prompts, [o + p for o, p in zip(outputs, paths)])
    assert torch.equal(got, want)


_OFF_HOST = {  # the sampler's paths, each as one row's params (the other row is plain greedy)
    "greedy": SamplingParams(temperature=0.0),
    "filters": SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.01, seed=1),
    "penalties on a tree's paths": SamplingParams(temperature=0.7, seed=2, repetition_penalty=1.2,
                                                  frequency_penalty=0.5, presence_penalty=0.3),
    "bias, min_tokens": SamplingParams(temperature=0.0, logit_bias=((3, 5.0),), min_tokens=4),
    # (not logprobs: their ties' order takes data-dependent shapes, which the meta device cannot
    # run; it reads no batch tensor, only the logits')
}


@pytest.mark.parametrize("case", sorted(_OFF_HOST))
def test_sampling_keeps_every_tensor_on_the_logits_device(case: str) -> None:
    """On a GPU the logits stay on the device, and a CUDA op refuses a host tensor beside its own:
    a batch built for the logits' device must sample there, with no host tensor and no copy back
    (each a sync). The meta device stands in for a GPU here: it refuses both too. (Before the
    batch took a device, every sampled request failed on a GPU: host temperatures over CUDA logits.)"""
    params = [_OFF_HOST[case], SamplingParams(temperature=0.0)] * 2
    # rows 0 and 2 take the case's params: row 0 is a tree's node after draft 6, row 2 bans token 9
    build = (params, [5] * 4, [6, 7, 6, 7], [[1, 2, 3]] * 4, [[4, 5]] * 4, [(0,)] * 4, None, [[], [], [9], []],
             [(6,), (), (), ()])
    logits = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    host = sample(logits, SamplingBatch.build(*build))
    out = sample(logits.to("meta"), SamplingBatch.build(*build, device="meta"))
    for a, b in zip(host, out):
        assert (a is None) == (b is None)
        if b is not None:
            assert b.device.type == "meta" and b.shape == a.shape and b.dtype == a.dtype
