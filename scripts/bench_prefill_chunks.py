"""A prompt's prefill time by the engine's step size (--max-num-batched-tokens), side by side (not a test).

    .venv/bin/python scripts/bench_prefill_chunks.py [--dtype float32] [--chunks 512,2048] [--pairs 6]

One engine per step size, loaded in this process, prefix cache off, one output token a prompt (a
prefill worker's work); the engines' order alternates so that the machine's drift falls on all.
- Alone: Shakespeare passages (~880 tokens) and two of them joined (~1,750), one at a time: each
  engine's times and the median ratio of each size to the first.
- Bursts (--burst N): N code-edit (~200 tokens) or ShareGPT prompts added at once, FCFS: mean, median
  and last time to a prompt's first token. Larger steps pack more prompts into one step, and every
  prompt of a step waits for the whole of it.
Session 49 (fp32, 2 cores): 2,048-token steps took a long prompt alone in 0.89-1.00x the time but
raised a burst's mean time to the first token in 11 of 12 bursts (by 4-61%), so both workers keep
512 (docs/performance.md).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from bench.datasets import load_prompts
from bench.inprocess import decode_batch
from bench.jobs import prompt_token_ids
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams


def prefill_seconds(engine: LLMEngine, prompt: list[int], tag: str) -> float:
    """The steps' time to the first (and only) output token."""
    return decode_batch(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=1), tag).batch_seconds


def burst_seconds(engine: LLMEngine, prompts: list[list[int]], tag: str) -> list[float]:
    """Seconds from adding every prompt at once to each one's first token, sorted."""
    params = SamplingParams(temperature=0.0, max_tokens=1)
    t0 = time.perf_counter()
    seqs = [engine.add_request(f"{tag}-{i}", p, params) for i, p in enumerate(prompts)]
    done: dict[str, float] = {}
    while engine.has_work:
        engine.step()
        now = time.perf_counter() - t0
        done.update((s.request_id, now) for s in seqs if s.finished and s.request_id not in done)
    return sorted(done.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--chunks", default="512,2048", help="comma-separated step sizes; the first is the baseline")
    ap.add_argument("--pairs", type=int, default=6, help="prompts of each length (each computed by every engine)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--burst", type=int, default=0, help="also bursts of this many prompts (code-edit, ShareGPT), 3 each")
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
    for dataset in ("code-edit", "sharegpt") if args.burst else ():
        prompts = [prompt_token_ids(tokenizer, p) for p in load_prompts(dataset)[: 3 * args.burst]]
        print(f"bursts of {args.burst} {dataset} prompts, {args.dtype}: mean / median / last time to the first token, s")
        for r in range(3):
            batch = prompts[r * args.burst:(r + 1) * args.burst]
            got = {c: burst_seconds(engines[c], batch, f"{dataset}-{r}-{c}")
                   for c in (chunks if r % 2 == 0 else chunks[::-1])}
            print(f"  {sum(map(len, batch))} tokens   " + "   ".join(
                f"{c}: {statistics.mean(got[c]):.2f} / {statistics.median(got[c]):.2f} / {got[c][-1]:.2f}" for c in chunks))


if __name__ == "__main__":
    main()
