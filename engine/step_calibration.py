"""The lookahead planner's step-cost model, started from forwards timed at engine start.

The planner prices a draft by what a step of so many query tokens, behind so long a context, costs
on this machine (engine.lookahead.budget). ``calibrate`` times such steps on the engine's own model
and KV pool, or takes the timings an earlier start with the same setup kept (engine.step_cost_cache).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from engine import step_cost_cache
from engine.batch import SeqInput, plan_batch
from engine.lookahead.budget import StepCostModel, key_reads

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)
CALIBRATION_ROUNDS = 3  # timings per step-cost point at engine start (the best is kept)
CONTEXT_SEQS = 8  # sequences behind the long context that price a context key (8 x 1,024 tokens: ~190 MB of bf16 KV for SmolLM2)


def calibrate(engine: LLMEngine) -> None:
    """The step cost model's start: the cost of a key read, then forwards of 1..W query tokens
    behind 64 (W: the widest step a plan may take, ``lookahead_max_step_tokens``, at least 64).
    A key read is priced by a double difference (32 vs 1 query tokens, behind a long
    vs a short context), which leaves out what a longer context costs once per sequence (the
    stream of its keys and values): that is priced apart, by CONTEXT_SEQS sequences of one
    token behind the long context against the short one (their KV more than a cache holds,
    as in decoding), per cached key (``per_context_key``). A drafting step's extra attention group
    is priced by two sequences of 1 + 8 tokens (a decode beside a chain: two groups where the
    backend groups) against 4 + 5 (one group), for a backend that pads groups. Only timings: the KV read is whatever the
    blocks hold. A pool too small for the long context keeps the per-token curve and prices
    no key reads (nor context keys: those need CONTEXT_SEQS long contexts). The result is kept
    on disk by setup (engine.step_cost_cache): a later start with the same setup takes it."""
    assert engine.speculator is not None, "calibration prices the lookahead planner's steps"
    bs, cost = engine.config.block_size, engine.speculator.cost
    long_ctx = engine.calibration_context  # behind it: 32 query tokens
    # the per-token curve, to the widest step a plan may take: past its last point the curve is
    # extrapolated in proportion (engine.lookahead.budget), which on an H200 (a step of 1 or 64
    # tokens: 10-13 ms) priced a 256-token step at 53 ms, most likely why 16 requests drafted little
    widest = max(64, min(1 << (engine.speculator.max_step_tokens - 1).bit_length(),
                         engine.max_model_len - 64, engine.allocator.num_free * bs - 64))
    ns = tuple(1 << i for i in range(widest.bit_length()) if 1 << i <= widest)
    n_short, n_long = -(-(64 + ns[-1]) // bs), -(-(long_ctx + 32) // bs)
    price_keys = long_ctx > 64 and engine.allocator.num_free >= n_long
    per_pair = -(-(64 + 8) // bs)  # each sequence of the group pair: 64 cached + up to 8 new
    # the context stream: each sequence its own blocks (shared ones would stay in the cache)
    price_stream = price_keys and engine.allocator.num_free >= CONTEXT_SEQS * n_long
    n_blocks = max(n_short, n_long if price_keys else 0, 2 * per_pair, CONTEXT_SEQS * n_long if price_stream else 0)
    if engine.allocator.num_free < n_blocks:
        return
    setup = {"model": engine.layout.model_id, "dtype": engine.layout.dtype, "device": step_cost_cache.device_name(
             engine.config.device), "threads": torch.get_num_threads(), "backend": type(engine.model.backend).__name__,
             "block_size": bs, "long_context": long_ctx, "price_keys": price_keys, "price_stream": price_stream,
             "cpu_linear": type(engine.model.weights.layers[0].qkv).__name__, "widths": ns,
             "fp32_products": sorted([*shape, *map(int, wx)] for shape, wx in engine.fp32_layouts.items())}
    if engine.kv.data.is_cuda:
        setup["triton"] = step_cost_cache.triton_digest()
    key = step_cost_cache.cache_key(setup)
    if engine.config.calibration_cache and step_cost_cache.load(key, cost):
        log_step_cost(cost, "kept from an earlier start")
        return
    blocks = engine.allocator.allocate(n_blocks)
    ids = list(range(100, 100 + ns[-1]))

    def timed(inputs: list[SeqInput]) -> float:
        t0 = time.perf_counter()
        engine.model.run(plan_batch(inputs, bs, engine.config.device), engine.kv)
        engine.sync()
        return time.perf_counter() - t0

    def one(n: int, ctx: int) -> list[SeqInput]:  # one sequence: n query tokens behind ctx
        return [SeqInput(ids[:n], ctx, blocks, logits="all")]

    def pair(a: int, b: int) -> list[SeqInput]:  # two sequences of a and b tokens behind 64 each
        return [SeqInput(ids[:n], 64, blocks[i * per_pair:(i + 1) * per_pair], logits="all")
                for i, n in enumerate((a, b))]

    def many(ctx: int) -> list[SeqInput]:  # CONTEXT_SEQS sequences of one token behind ctx each
        return [SeqInput(ids[:1], ctx, blocks[i * n_long:(i + 1) * n_long], logits="all")
                for i in range(CONTEXT_SEQS)]

    try:
        timed(one(64, 0))  # warm-up
        # each point is the best of CALIBRATION_ROUNDS timings taken in alternating order: a
        # worker starts beside others that load their models, and one slowed timing (a 2-token
        # step at 969 ms beside 8 tokens at 51, seen at a stack's start) made wide steps look
        # cheaper than narrow ones, so every request drafted as wide as it could
        runs: dict[tuple[int, int], list[float]] = {}
        points = [(n, 64) for n in ns] + ([(1, long_ctx), (32, long_ctx)] if price_keys else [])
        pairs = [(1, 8), (4, 5)] if engine.model.backend.pads_groups else []
        streams = [64, long_ctx] if price_stream else []
        for r in range(CALIBRATION_ROUNDS):
            for n, ctx in points if r % 2 == 0 else points[::-1]:
                runs.setdefault((n, ctx), []).append(timed(one(n, ctx)))
            for a, b in pairs if r % 2 == 0 else pairs[::-1]:
                runs.setdefault((-a, -b), []).append(timed(pair(a, b)))
            for ctx in streams if r % 2 == 0 else streams[::-1]:
                runs.setdefault((0, ctx), []).append(timed(many(ctx)))
        best = {key: min(times) for key, times in runs.items()}
        short = {n: best[n, 64] for n in ns}
        if price_keys:
            extra = (best[32, long_ctx] - best[1, long_ctx]) - (best[32, 64] - best[1, 64])
            cost.per_key_read = max(0.0, extra) / (31 * (long_ctx - 64))
        if price_stream:  # a sequence's first row reads each key: per_key_read of it is priced already
            stream = (best[0, long_ctx] - best[0, 64]) / (CONTEXT_SEQS * (long_ctx - 64))
            cost.per_context_key = max(0.0, stream - cost.per_key_read)
        cost.group_overhead = max(0.0, best[-1, -8] - best[-4, -5]) if pairs else 0.0
        for n, seconds in short.items():
            cost.observe(n, seconds, key_reads=key_reads(64, n))
        log_step_cost(cost, "measured")
        if engine.config.calibration_cache:
            step_cost_cache.store(key, cost, setup)
    finally:
        engine.allocator.free(blocks)


def log_step_cost(cost: StepCostModel, how: str) -> None:
    logger.info("step cost (%s): %s ms by query tokens, %.3f us per key read, %.3f us per context key, "
                "%.2f ms per extra attention group", how,
                {round(x): round(t * 1e3, 1) for x, t in sorted(cost.points.values())},
                cost.per_key_read * 1e6, cost.per_context_key * 1e6, cost.group_overhead * 1e3)
