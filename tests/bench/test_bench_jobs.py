"""Picking, tokenizing and ordering jobs."""
from __future__ import annotations

import itertools

from bench.datasets import load_prompts
from bench.jobs import prompt_token_ids, repeat_jobs, select_jobs
from engine.tokenizer import apply_chat_template


def test_selection_is_seeded_filtered_and_disjoint(tokenizer) -> None:
    prompts = load_prompts("humaneval")
    sel = select_jobs(prompts, tokenizer, num=10, warmup=2, max_tokens=32, max_prompt_tokens=150, seed=1)
    again = select_jobs(prompts, tokenizer, num=10, warmup=2, max_tokens=32, max_prompt_tokens=150, seed=1)
    other = select_jobs(prompts, tokenizer, num=10, warmup=2, max_tokens=32, max_prompt_tokens=150, seed=2)
    ids = [j.prompt.id for j in sel.jobs]
    assert len(ids) == 10 and ids == [j.prompt.id for j in again.jobs] and ids != [j.prompt.id for j in other.jobs]
    assert not set(ids) & {j.prompt.id for j in sel.warmup} and len(sel.warmup) == 2
    assert all(len(j.prompt_ids) <= 150 and j.max_tokens == 32 for j in sel.jobs)
    assert [j.index for j in sel.jobs] == list(range(10))
    # in order without a seed; the long prompts are skipped, not truncated
    ordered = select_jobs(prompts, tokenizer, num=3, warmup=0, max_tokens=8, max_prompt_tokens=10_000, seed=None)
    assert [j.prompt.id for j in ordered.jobs] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert list(ordered.jobs[0].prompt_ids) == tokenizer.encode(prompts[0].text)


def test_chat_prompts_use_the_chat_template(tokenizer) -> None:
    p = load_prompts("sharegpt")[0]
    ids = prompt_token_ids(tokenizer, p)
    assert ids == apply_chat_template(tokenizer, p.openai_messages())
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_sessions_stay_whole_and_in_turn_order(tokenizer) -> None:
    prompts = load_prompts("multiturn")[:400]
    sel = select_jobs(prompts, tokenizer, num=12, warmup=1, max_tokens=8, max_prompt_tokens=4096, seed=0)
    jobs = sel.jobs
    assert len(jobs) == 12
    by_index = {j.index: j for j in jobs}
    for j in jobs:
        if j.prompt.turn == 0:
            assert j.after is None
        else:
            prev = by_index[j.after]
            assert prev.index < j.index and prev.prompt.session == j.prompt.session and prev.prompt.turn == j.prompt.turn - 1
            assert j.prompt_ids[: len(prev.prompt_ids) - 1] == prev.prompt_ids[:-1]  # shared prefix
    turns = [j.prompt.turn for j in jobs]
    assert turns == sorted(turns)  # turn-major: all first turns before any second turn
    assert all(j.prompt.turn == 0 and j.after is None for j in sel.warmup)
    assert not {j.prompt.session for j in sel.warmup} & {j.prompt.session for j in jobs}


def test_repeat_jobs_keeps_indices_unique(tokenizer) -> None:
    prompts = load_prompts("multiturn")[:40]
    jobs = select_jobs(prompts, tokenizer, num=6, warmup=0, max_tokens=8, max_prompt_tokens=4096, seed=0).jobs
    repeated = list(itertools.islice(repeat_jobs(jobs), 18))
    assert [j.index for j in repeated] == list(range(18))
    for j in repeated:
        base = jobs[j.index % 6]
        assert j.prompt == base.prompt
        assert j.after == (None if base.after is None else base.after + 6 * (j.index // 6))
