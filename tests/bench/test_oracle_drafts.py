"""The oracle drafts behind scripts/lookahead_ceiling.py: taken whole, output unchanged (real model)."""
from __future__ import annotations

from typing import Any

from bench.inprocess import decode_batch
from bench.oracle_drafts import OracleSpeculator, drafter_steps
from engine.lookahead.drafter import Drafter, DrafterConfig
from engine.sampling_params import SamplingParams

TEXTS = ("def add(a, b):", "The capital of France is")


def test_oracle_chains_are_taken_whole_and_change_no_token(engine: Any, tokenizer: Any) -> None:
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    plain = decode_batch(engine, prompts, params, "oracle-ref")
    answers = {tuple(p): o for p, o in zip(prompts, plain.outputs)}
    base = engine.speculator
    try:
        engine.speculator = oracle = OracleSpeculator(base, answers, depth=4)
        chains = decode_batch(engine, prompts, params, "oracle-chains")
        # runs of 2 everywhere: drafts of 2, cut to the room left before max_tokens
        engine.speculator = runs = OracleSpeculator(base, answers, depth=16, runs={k: [2] * 12 for k in answers})
        cut = decode_batch(engine, prompts, params, "oracle-runs")
    finally:
        engine.speculator = base
    assert chains.outputs == cut.outputs == plain.outputs
    for st in (oracle.stats, runs.stats):
        assert st.num_draft_tokens > 0 and st.num_accepted_tokens == st.num_draft_tokens
    # 11 tokens after the prefill's: 4 drafts + the model's a step (room: 10, then 5, then none)
    assert chains.steps == 3
    assert cut.steps == 4  # 3 + 3 + 3, then a draft of 1 (the room left) + 1
    assert not engine.has_work and engine.allocator.num_used == 0


def test_the_drafter_replayed_over_a_copy_of_its_prompt_takes_it_in_one_step() -> None:
    prompt = list(range(100, 130))
    output = list(range(105, 120))  # the model copies 15 tokens of its prompt
    drafter = Drafter(DrafterConfig())
    assert drafter_steps(drafter, "copy", prompt, output, depth=16, width=2) == 1
    assert drafter_steps(drafter, "short", prompt, output, depth=4, width=1) == 3  # 14 tokens after the first: 5 + 5 + 4
    assert not drafter.local  # each replay forgets its request


def test_usage_counts_the_drafts_that_reach_the_output(engine: Any, tokenizer: Any) -> None:
    """A stop token inside a path the verifier took whole ends the output there: the request's
    accepted count (OpenAI's accepted_prediction_tokens) holds only the drafts before it, while the
    server-wide counters keep what the verifier accepted, as vLLM's do."""
    prompt = tokenizer(TEXTS[1])["input_ids"]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    answer = decode_batch(engine, [prompt], params, "usage-ref").outputs[0]
    at = next(i for i in range(3, 9) if answer[i] not in answer[:i])  # the stop: its first occurrence
    base = engine.speculator
    try:  # the prefill samples answer[0]; the next step drafts answer[1:9], all taken
        engine.speculator = oracle = OracleSpeculator(base, {tuple(prompt): answer}, depth=8)
        seq = engine.add_request("usage-stop", prompt, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True,
                                                                        stop_token_ids=(answer[at],)))
        while engine.has_work:
            engine.step()
    finally:
        engine.speculator = base
    assert seq.output_ids == answer[: at + 1] and seq.finish_reason == "stop"
    assert oracle.stats.num_draft_tokens == oracle.stats.num_accepted_tokens == 8
    assert seq.num_draft_tokens == 8 and seq.num_accepted_tokens == at  # answer[1..at]: drafts in the output
    assert not engine.has_work and engine.allocator.num_used == 0
