"""A prompt's prefill time by the engine's step size (--max-num-batched-tokens), side by side (not a test).

    .venv/bin/python scripts/bench_prefill_chunks.py [--dtype float32] [--chunks 512,2048] [--pairs 6]

One engine per step size, loaded in this process; each computes the same prompts alone (prefix
cache off, one output token), the engines' order alternating prompt by prompt so that the machine's
drift falls on all of them. Prompts: Shakespeare passages (~880 tokens) and two of them joined
(~1,750). Prints each engine's times and the median ratio of each size to the first. This is what
set a prefill worker's default step (prefill_worker.__main__).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from bench.datasets import load_prompts
from bench.jobs import prompt_token_ids
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

logger = logging.getLogger("bench_prefill_chunks")


def prefill_seconds(engine: LLMEngine, prompt: list[int], tag: str) -> float:
    """Wall time from add_request to the first (and only) output token."""
    params = SamplingParams(temperature=0.0, max_tokens=1)
    t0 = time.perf_counter()
    engine.add_request(tag, prompt, params)
    while engine.has_work:
        engine.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--chunks", default="512,2048", help="comma-separated step sizes; the first is the baseline")
    ap.add_argument("--pairs", type=int, default=6, help="prompts of each length (each computed by every engine)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    chunks = [int(c) for c in args.chunks.split(",")]
    engines = {c: LLMEngine(EngineConfig(dtype=args.dtype, lookahead=False, num_kv_blocks=1024, prefix_caching=False,
                                         max_num_batched_tokens=c)) for c in chunks}
    tokenizer = engines[chunks[0]].tokenizer
    records = load_prompts("shakespeare-quote")
    ids = [prompt_token_ids(tokenizer, p) for p in records[: 2 * args.pairs + 1]]
    lengths = {"one passage": ids[: args.pairs], "two joined": [a + b for a, b in zip(ids[args.pairs:2 * args.pairs], ids[1:])]}
    for c, engine in engines.items():  # first-call costs out of the timing
        prefill_seconds(engine, ids[-1], f"warm-{c}")
    for name, prompts in lengths.items():
        times: dict[int, list[float]] = {c: [] for c in chunks}
        for k, prompt in enumerate(prompts):
            for c in chunks if k % 2 == 0 else chunks[::-1]:
                times[c].append(prefill_seconds(engines[c], prompt, f"{name}-{k}-{c}"))
        mean_len = sum(map(len, prompts)) / len(prompts)
        print(f"{name} (~{mean_len:.0f} tokens), {args.dtype}, {args.threads} threads, ms:")
        base = times[chunks[0]]
        for c in chunks:
            ratio = statistics.median(t / b for t, b in zip(times[c], base))
            print(f"  {c:>5}: {' '.join(f'{t * 1e3:.0f}' for t in times[c])}   median ratio to {chunks[0]}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
