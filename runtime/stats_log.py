"""A worker's periodic stats line in its log, as vLLM's engine logs one every 10 s: prompt and
generation throughput over the interval, requests running and waiting, KV cache usage, the
prefix cache's hit rate, and lookahead's acceptance (mean tokens a draft step gave, accepted of
drafted, per position). Logged while the worker has or had work in the interval; an idle worker
stays quiet. ``--disable-log-stats`` turns it off, ``--log-stats-interval`` sets the period.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from engine.llm_engine import LLMEngine

logger = logging.getLogger("stats")


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    prompt_tokens: int
    generation_tokens: int
    prefix_queries: int
    prefix_hits: int
    drafts: int
    draft_tokens: int
    accepted_tokens: int
    accepted_per_pos: tuple[int, ...]


def snapshot(engine: LLMEngine) -> Snapshot:
    """The engine's counters now (read from another thread: each a plain int, read once)."""
    cache, spec = engine.prefix_cache, engine.speculator
    per_pos = dict(spec.stats.accepted_per_pos) if spec is not None else {}
    return Snapshot(time.monotonic(), engine.counts.prompt_tokens, engine.counts.generation_tokens,
                    cache.stats.query_tokens if cache is not None else 0, cache.stats.hit_tokens if cache is not None else 0,
                    spec.stats.num_drafts if spec is not None else 0, spec.stats.num_draft_tokens if spec is not None else 0,
                    spec.stats.num_accepted_tokens if spec is not None else 0,
                    tuple(per_pos.get(p, 0) for p in range(max(per_pos, default=-1) + 1)))


def stats_line(engine: LLMEngine, before: Snapshot, now: Snapshot) -> str | None:
    """The interval's line; None when the worker was idle through it."""
    running, waiting = len(engine.scheduler.running), len(engine.scheduler.waiting)
    prompt, generated = now.prompt_tokens - before.prompt_tokens, now.generation_tokens - before.generation_tokens
    if not (prompt or generated or running or waiting):
        return None
    seconds = max(now.at - before.at, 1e-9)
    alloc = engine.allocator
    parts = [f"prompt throughput: {prompt / seconds:.1f} tokens/s", f"generation throughput: {generated / seconds:.1f} tokens/s",
             f"running: {running} reqs", f"waiting: {waiting} reqs", f"KV cache usage: {alloc.num_used / alloc.num_blocks:.1%}"]
    queries = now.prefix_queries - before.prefix_queries
    if queries:
        parts.append(f"prefix cache hit rate: {(now.prefix_hits - before.prefix_hits) / queries:.1%}")
    line = ", ".join(parts)
    drafts = now.drafts - before.drafts
    if drafts:
        drafted, accepted = now.draft_tokens - before.draft_tokens, now.accepted_tokens - before.accepted_tokens
        per_pos = [n - (before.accepted_per_pos[p] if p < len(before.accepted_per_pos) else 0)
                   for p, n in enumerate(now.accepted_per_pos)]
        line += (f"; lookahead: mean acceptance length {1 + accepted / drafts:.2f}, accepted {accepted} of {drafted} "
                 f"draft tokens ({accepted / max(drafted, 1):.1%}), per position "
                 + ", ".join(f"{n / drafts:.2f}" for n in per_pos))
    return line


async def log_stats(engine: LLMEngine, interval: float, stop: asyncio.Event) -> None:
    """Logs the stats line every ``interval`` seconds until ``stop`` is set."""
    before = snapshot(engine)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass
        now = snapshot(engine)
        line = stats_line(engine, before, now)
        if line is not None:
            logger.info("%s", line)
        before = now
