"""Greedy generation with Grove's engine is token-identical to transformers ``generate``."""
from __future__ import annotations

import logging
from typing import Any

from engine.reference import compare_greedy
from engine.sampling_params import SamplingParams
from tests.prompts import engine_prompts

logger = logging.getLogger(__name__)


def test_greedy_128_tokens_on_10_prompts_matches_transformers(engine: Any, tokenizer: Any, hf_reference: Any) -> None:
    prompts = engine_prompts(tokenizer)
    assert len(prompts) == 10
    outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=128))
    compared = 0
    for i, (p, out) in enumerate(zip(prompts, outs)):
        ref = hf_reference(p, 128)
        m = compare_greedy(ref, out.output_ids)
        if m.near_tie:
            print(f"prompt {i}: {m.message}")  # noqa: T201 - the rule says the test prints it
        assert m.ok, f"prompt {i}: {m.message}"
        compared += m.compared
    assert compared >= 10 * 100, f"only {compared} tokens compared"
