"""Engine decode speed vs transformers ``generate``, side by side in one run (not a test).

    .venv/bin/python scripts/bench_engine.py [--dtype float32] [--prompt-len 256] [--new 128]

Decodes --new tokens after a --prompt-len token prompt at batch 1 and batch 8 with Grove's engine
and with transformers, greedy, on the same prompts; prints tokens/s and the ratios.
"""
from __future__ import annotations

import argparse
import logging
import random
import time

import torch

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams


def grove_decode_tps(engine: LLMEngine, prompts: list[list[int]], new: int) -> float:
    """Decode tokens/s: prefill first (timed apart), then the decode steps."""
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"bench-{time.monotonic_ns()}-{i}", p, params)
    engine.step()  # the prefill of every prompt (one chunked step when they fit the budget)
    while any(s.is_prefilling for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    start = time.perf_counter()
    produced = 0
    while engine.has_work:
        produced += sum(len(o.new_tokens) for o in engine.step())
    return produced / (time.perf_counter() - start)


def hf_decode_tps(model: torch.nn.Module, prompts: list[list[int]], new: int) -> float:
    ids = torch.tensor(prompts)
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kwargs)
        total = time.perf_counter() - t0
    return len(prompts) * (new - 1) / (total - prefill)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    # plain decoding (lookahead off): the engine itself against transformers' plain generate
    engine = LLMEngine(EngineConfig(dtype=args.dtype, num_kv_blocks=256, lookahead=False))
    hf = AutoModelForCausalLM.from_pretrained(engine.config.model_dir, dtype=getattr(torch, args.dtype)).eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 40000) for _ in range(args.prompt_len)] for _ in range(8)]
    grove_decode_tps(engine, prompts[:1], 8)  # warm-up
    rows = []
    for bsz in (1, 8):
        g = grove_decode_tps(engine, prompts[:bsz], args.new)
        h = hf_decode_tps(hf, prompts[:bsz], args.new)
        rows.append((bsz, g, h))
    hf_b1 = rows[0][2]
    print(f"model {engine.config.model_dir.name}, {args.dtype}, prompt {args.prompt_len}, {args.new} new tokens, {args.threads} threads")  # noqa: T201
    print(f"{'batch':>5} {'grove tok/s':>12} {'hf tok/s':>10} {'grove/hf':>9} {'grove/hf(b1)':>13}")  # noqa: T201
    for bsz, g, h in rows:
        print(f"{bsz:>5} {g:>12.1f} {h:>10.1f} {g / h:>8.2f}x {g / hf_b1:>12.2f}x")  # noqa: T201


if __name__ == "__main__":
    main()
