"""Timing the engine's decode in-process (the scripts that compare it with a baseline side by side)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence as Seq


@dataclass
class Decode:
    """One batch's decode phase on one engine."""

    outputs: list[list[int]]
    tokens: int  # tokens produced after each sequence's first
    seconds: float
    steps: int
    seq_steps: int = 0  # over the timed steps, the sequences each decoded (tokens / seq_steps: tokens a step); decode_interleaved only
    batch_seconds: float = 0.0  # every step's, the prefills' too (decode_interleaved only)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


Params = SamplingParams | Sequence[SamplingParams]  # every prompt's, or each prompt's own


def _nth(params: Params, i: int) -> SamplingParams:
    return params if isinstance(params, SamplingParams) else params[i]


def decode_batch(engine: LLMEngine, prompts: Sequence[Sequence[int]], params: Params, tag: str) -> Decode:
    """Adds every prompt at once, steps untimed until each has its first token (the prefill), then
    times the steps until all finish."""
    return decode_interleaved([engine], prompts, params, tag)[0]


def decode_interleaved(engines: Sequence[LLMEngine], prompts: Sequence[Sequence[int]], params: Params,
                       tag: str) -> list[Decode]:
    """``decode_batch`` on several engines at once, their steps taken in turn (one step of each,
    then again), each engine's own steps timed: a slow spell of the machine (seen here: 2-3x for
    seconds at a time) then falls on all of them alike, where runs one after the other would give
    it to whichever ran then. Each engine's weights and KV (hundreds of MB) are streamed from
    memory every step either way, so taking turns leaves no engine's caches warmer.

    ``tokens``: every output token after each sequence's first, the same count for engines whose
    outputs are equal, though some came in the untimed steps: a sequence done with its prefill
    decodes beside the others' prefill chunks, and a drafting engine takes more tokens there (a
    count of the tokens after the last prefill alone gave it fewer tokens for as many timed steps
    as an engine that does not draft, the batch's longest answer setting both: code edits at c=16
    read 0.98x where the drafting engine finished 2% sooner). What those drafts cost in the
    prefill steps is in ``batch_seconds``, every step's time, whose ratio is the unbiased one
    (diluted by the prefills both engines compute alike)."""
    seqs = [[e.add_request(f"{tag}-{k}-{time.monotonic_ns()}-{i}", ids, _nth(params, i)) for i, ids in enumerate(prompts)]
            for k, e in enumerate(engines)]

    def prefilling(k: int) -> bool:
        return engines[k].has_work and any(not s.output_ids for s in seqs[k])

    batch = [0.0] * len(engines)
    while any(prefilling(k) for k in range(len(engines))):
        for k, e in enumerate(engines):  # the prefills, untimed but in batch_seconds
            if prefilling(k):
                start = time.perf_counter()
                e.step()
                batch[k] += time.perf_counter() - start
    seconds, steps, seq_steps = [0.0] * len(engines), [0] * len(engines), [0] * len(engines)
    while any(e.has_work for e in engines):
        for k, e in enumerate(engines):
            if e.has_work:
                seq_steps[k] += sum(not s.finished for s in seqs[k])
                start = time.perf_counter()
                e.step()
                seconds[k] += time.perf_counter() - start
                steps[k] += 1
    return [Decode([list(s.output_ids) for s in ss], sum(max(0, len(s.output_ids) - 1) for s in ss), sec, n, m,
                   b + sec)
            for ss, sec, n, m, b in zip(seqs, seconds, steps, seq_steps, batch)]


def decode_stream(engine: LLMEngine, prompts: Sequence[Sequence[int]], params: Params, concurrency: int,
                  tag: str) -> Decode:
    """Keeps ``concurrency`` requests in flight, adding the next prompt as one finishes (vLLM's
    ``--max-concurrency``), so the batch holds its size but for the last ``concurrency - 1``
    finishes. Times everything from the first add to the last finish, prefills included (they
    share steps with the decodes); ``tokens`` counts every output token after each one's first."""
    pending = list(enumerate(prompts))
    running: list[tuple[int, Seq]] = []
    done: dict[int, list[int]] = {}
    steps, start = 0, time.perf_counter()
    while pending or running:
        while pending and len(running) < concurrency:
            i, ids = pending.pop(0)
            running.append((i, engine.add_request(f"{tag}-{time.monotonic_ns()}-{i}", ids, _nth(params, i))))
        engine.step()
        steps += 1
        for i, seq in [r for r in running if r[1].finished]:
            done[i] = list(seq.output_ids)
        running = [r for r in running if not r[1].finished]
    seconds = time.perf_counter() - start
    outputs = [done[i] for i in range(len(prompts))]
    return Decode(outputs, sum(len(o) - 1 for o in outputs), seconds, steps, batch_seconds=seconds)
