"""From dataset prompts to the jobs of a run: pick, tokenize, filter by length, order sessions."""
from __future__ import annotations

import logging
import random
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

from bench.records import Job, Prompt
from engine.tokenizer import apply_chat_template

logger = logging.getLogger(__name__)


class Selection(NamedTuple):
    jobs: list[Job]  # measured
    warmup: list[Job]  # sent first, not measured; prompts disjoint from the measured ones


def prompt_token_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """The exact tokens the model sees: the chat template for chat, the tokenizer's default for text."""
    if prompt.messages is not None:
        return apply_chat_template(tokenizer, prompt.openai_messages())
    assert prompt.text is not None
    return list(tokenizer.encode(prompt.text))


def _groups(prompts: Iterable[Prompt]) -> list[list[Prompt]]:
    """Sessions stay together (in turn order); a prompt without a session is its own group."""
    by_session: dict[str, list[Prompt]] = {}
    groups: list[list[Prompt]] = []
    for p in prompts:
        if p.session is None:
            groups.append([p])
        elif p.session in by_session:
            by_session[p.session].append(p)
        else:
            by_session[p.session] = [p]
            groups.append(by_session[p.session])
    for g in groups:
        g.sort(key=lambda p: p.turn)
    return groups


def _tokenized(groups: Iterable[list[Prompt]], tokenizer: Any, max_prompt_tokens: int) -> Iterator[list[tuple[Prompt, list[int]]]]:
    """Each group cut before its first prompt longer than ``max_prompt_tokens`` (later turns only grow)."""
    for group in groups:
        kept = []
        for p in group:
            ids = prompt_token_ids(tokenizer, p)
            if not ids or len(ids) > max_prompt_tokens:
                break
            kept.append((p, ids))
        if kept:
            yield kept


def _layout(groups: Sequence[list[tuple[Prompt, list[int]]]], max_tokens: int) -> list[Job]:
    # Turn-major order (all first turns, then all second turns, ...): a worker that picks up
    # turn t rarely has to wait for turn t-1 of the same session, which was queued long before.
    order = sorted((t, g) for g, group in enumerate(groups) for t in range(len(group)))
    index_of = {key: i for i, key in enumerate(order)}
    jobs = []
    for i, (t, g) in enumerate(order):
        prompt, ids = groups[g][t]
        after = index_of[(t - 1, g)] if t > 0 else None
        jobs.append(Job(index=i, prompt=prompt, prompt_ids=tuple(ids),
                        max_tokens=prompt.max_tokens or max_tokens, after=after))
    return jobs


def select_jobs(prompts: Sequence[Prompt], tokenizer: Any, *, num: int, warmup: int, max_tokens: int,
                max_prompt_tokens: int, seed: int | None, skip: int = 0) -> Selection:
    """``num`` measured jobs and ``warmup`` warm-up jobs from ``prompts``.

    With a seed, sessions are shuffled (reproducibly); without, the dataset's order is kept.
    ``skip`` drops that many sessions (or single prompts) from the front of that order first:
    runs with the same seed and skips far enough apart get disjoint prompts.
    Only the prompts picked are tokenized, so a small run over a big dataset stays quick.
    """
    groups = _groups(prompts)
    if seed is not None:
        random.Random(seed).shuffle(groups)
    groups = groups[skip:]
    measured: list[list[tuple[Prompt, list[int]]]] = []
    warm: list[list[tuple[Prompt, list[int]]]] = []
    count = 0
    for group in _tokenized(groups, tokenizer, max_prompt_tokens):
        if count < num:
            measured.append(group[: num - count])
            count += len(measured[-1])
        elif len(warm) < warmup:
            warm.append(group[:1])  # a first turn only: warm-up jobs have no ordering constraint
        else:
            break
    if count < num:
        logger.warning("only %d prompts fit max_prompt_tokens=%d (asked for %d)", count, max_prompt_tokens, num)
    if len(warm) < warmup:
        logger.warning("only %d warm-up prompts left after the measured ones (asked for %d)", len(warm), warmup)
    return Selection(jobs=_layout(measured, max_tokens), warmup=_layout(warm, max_tokens))


def repeat_jobs(jobs: Sequence[Job]) -> Iterator[Job]:
    """The jobs over and over (for a run with a duration), re-indexed so indices stay unique."""
    n = len(jobs)
    assert n > 0
    passes = 0
    while True:
        offset = passes * n
        for j in jobs:
            yield Job(index=j.index + offset, prompt=j.prompt, prompt_ids=j.prompt_ids, max_tokens=j.max_tokens,
                      after=None if j.after is None else j.after + offset)
        passes += 1
