"""Timing the engine's decode in-process (the scripts that compare it with a baseline side by side)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams


@dataclass
class Decode:
    """One batch's decode phase on one engine."""

    outputs: list[list[int]]
    tokens: int  # tokens produced after each sequence's first
    seconds: float
    steps: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def decode_batch(engine: LLMEngine, prompts: Sequence[Sequence[int]], params: SamplingParams, tag: str) -> Decode:
    """Adds every prompt at once, steps untimed until each has its first token (the prefill), then
    times the steps until all finish."""
    seqs = [engine.add_request(f"{tag}-{time.monotonic_ns()}-{i}", ids, params) for i, ids in enumerate(prompts)]
    while engine.has_work and any(not s.output_ids for s in seqs):
        engine.step()
    first = sum(len(s.output_ids) for s in seqs)
    steps, start = 0, time.perf_counter()
    while engine.has_work:
        engine.step()
        steps += 1
    seconds = time.perf_counter() - start
    return Decode([list(s.output_ids) for s in seqs], sum(len(s.output_ids) for s in seqs) - first, seconds, steps)
