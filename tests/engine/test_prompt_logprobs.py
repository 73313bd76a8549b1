"""Prompt logprobs (completions' echo + logprobs): every prompt token's logprob, rank and top-n, as
transformers gives them, computed in chunks, never from a cached prefix, and not repeated after a
preemption's recompute."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

TEXT = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy cat, and then"


def test_prompt_logprobs_equal_transformers_in_chunks_behind_a_cached_prefix(model_dir: Path, hf_model: Any,
                                                                            tokenizer: Any) -> None:
    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, max_num_batched_tokens=8, lookahead=False))
    ids = tokenizer(TEXT)["input_ids"]
    assert len(ids) > 20
    eng.generate([ids], SamplingParams(temperature=0.0, max_tokens=2))  # the prompt's blocks now cached
    seq = eng.add_request("lp", ids, SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=3))
    while eng.has_work:
        eng.step()
    assert seq.num_cached_prompt == 0  # computed, though its prefix was cached
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits[0].log_softmax(-1)
    assert len(seq.prompt_logprobs) == len(ids) - 1
    ranked = 0
    for j, (lp, rank, top_ids, top_lps) in enumerate(seq.prompt_logprobs):  # entry j: token j + 1 given ids[: j + 1]
        assert abs(lp - ref[j, ids[j + 1]].item()) < 1e-3, j
        # rank: 1 + the tokens likelier than the prompt's, as transformers' logits order them
        # (within 1e-3 of it either way: a near tie may fall either side)
        likelier = int((ref[j] > ref[j, ids[j + 1]] + 1e-3).sum())
        assert likelier + 1 <= rank <= int((ref[j] > ref[j, ids[j + 1]] - 1e-3).sum()) + 1, (j, rank, likelier)
        ranked += rank > 1
        want = ref[j].topk(3)
        assert torch.allclose(torch.tensor(top_lps), want.values, atol=1e-3), j
        gaps = want.values[:-1] - want.values[1:]
        if bool((gaps > 1e-3).all()):  # order is defined where the top-3 are not near ties
            assert top_ids == want.indices.tolist(), j
    assert ranked > 5  # most prompt tokens are not the model's first guess: ranks are really counted


def test_preempted_prompt_logprobs_are_not_repeated(model_dir: Path) -> None:
    """Too few blocks: sequences are preempted and recomputed; each keeps one entry per prompt
    token, equal to the run with room."""
    rng = random.Random(3)
    prompts = [[rng.randrange(100, 40000) for _ in range(24)] for _ in range(4)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, prompt_logprobs=0)

    def run(blocks: int) -> tuple[list[list[float]], int]:
        eng = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=blocks, lookahead=False,
                                     max_num_batched_tokens=16))
        seqs = [eng.add_request(f"r{i}", p, params) for i, p in enumerate(prompts)]
        while eng.has_work:
            eng.step()
        return [[e[0] for e in s.prompt_logprobs] for s in seqs], eng.scheduler.num_preemptions

    roomy, none = run(64)
    tight, preempted = run(9)  # 4 x 48 tokens need 12
    assert none == 0 and preempted > 0
    assert [len(r) for r in tight] == [23] * 4 and tight == roomy
