"""Greedy generation with Grove's engine is token-identical to transformers ``generate``."""
from __future__ import annotations

import logging
from typing import Any

import torch

from engine.reference import compare_greedy, hf_greedy, hf_greedy_batch
from engine.sampling_params import SamplingParams
from tests.prompts import engine_prompts

logger = logging.getLogger(__name__)


def test_greedy_128_tokens_on_10_prompts_matches_transformers(engine: Any, tokenizer: Any, hf_reference: Any) -> None:
    prompts = engine_prompts(tokenizer)
    assert len(prompts) == 10
    outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=128))
    compared = 0
    for i, (ref, out) in enumerate(zip(hf_reference.many(prompts, 128), outs)):
        m = compare_greedy(ref, out.output_ids)
        if m.near_tie:
            print(f"prompt {i}: {m.message}")  # noqa: T201 - the rule says the test prints it
        assert m.ok, f"prompt {i}: {m.message}"
        compared += m.compared
    assert compared >= 10 * 100, f"only {compared} tokens compared"


def test_batched_reference_equals_one_prompt_at_a_time(hf_model: Any, tokenizer: Any) -> None:
    """The left-padded batch the tests take their references from gives transformers' one-prompt
    tokens, and a row that ends on EOS stops there (prompt 2 ends after 46 tokens; prompt 5, a chat
    of another length, is padded otherwise)."""
    prompts = [engine_prompts(tokenizer)[i] for i in (2, 5)]
    batched = hf_greedy_batch(hf_model, prompts, 48)
    alone = [hf_greedy(hf_model, p, 48) for p in prompts]
    assert [r.tokens for r in batched] == [r.tokens for r in alone]
    assert [len(r.tokens) for r in batched] == [46, 48] and batched[0].tokens[-1] == tokenizer.eos_token_id
    for b, a in zip(batched, alone):
        assert len(b.top2_gaps) == len(b.tokens)
        assert max(abs(x - y) for x, y in zip(a.top2_gaps, b.top2_gaps)) < 1e-3


def test_repetition_penalty_matches_transformers(engine: Any, tokenizer: Any, hf_model: Any) -> None:
    """vLLM's repetition_penalty is transformers' (prompt and output tokens, divide a positive logit,
    multiply a negative one): greedy tokens agree with ``generate(repetition_penalty=...)``, lookahead
    on, and the penalty changes them."""
    prompts = [engine_prompts(tokenizer)[i] for i in (0, 3)]
    params = SamplingParams(temperature=0.0, max_tokens=40, repetition_penalty=1.3)
    outs = [o.output_ids for o in engine.generate(prompts, params)]
    plain = [o.output_ids for o in engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=40))]
    refs = []
    for p in prompts:
        with torch.inference_mode():
            ids = hf_model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                    do_sample=False, max_new_tokens=40, repetition_penalty=1.3,
                                    pad_token_id=tokenizer.eos_token_id)
        refs.append(ids[0, len(p):].tolist())
    assert outs == refs
    assert outs != plain
