"""Engine decode speed vs transformers ``generate``, side by side in one run (not a test).

    .venv/bin/python scripts/bench_engine.py [--dtype float32] [--prompt-len 256] [--new 128] [--rounds 3]

Decodes --new tokens after a --prompt-len token prompt at batch 1 and batch 8 with Grove's engine
and with transformers, greedy, on the same prompts. Each round runs Grove then transformers at one
batch size, so both see the same machine load; the table gives the median tokens/s over the rounds,
the ratio of the medians and the range of the per-round ratios.
"""
from __future__ import annotations

import argparse
import logging
import random
import statistics
import time

import torch

from bench.inprocess import decode_batch
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams


def grove_decode_tps(engine: LLMEngine, prompts: list[list[int]], new: int) -> float:
    """Decode tokens/s: prefill first (untimed), then the decode steps."""
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    return decode_batch(engine, prompts, params, "bench").tokens_per_second


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
    parser.add_argument("--rounds", type=int, default=3, help="Grove/transformers pairs per batch size")
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
        pairs = [(grove_decode_tps(engine, prompts[:bsz], args.new), hf_decode_tps(hf, prompts[:bsz], args.new))
                 for _ in range(args.rounds)]
        g, h = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        rows.append((bsz, g, h, min(a / b for a, b in pairs), max(a / b for a, b in pairs)))
    hf_b1 = rows[0][2]
    lines = [f"model {engine.config.model_dir.name}, {args.dtype}, prompt {args.prompt_len}, {args.new} new tokens, "
             f"{args.threads} threads, median of {args.rounds} rounds",
             f"{'batch':>5} {'grove tok/s':>12} {'ms/step':>8} {'hf tok/s':>10} {'ms/step':>8} {'grove/hf':>9} "
             f"{'(rounds)':>12} {'grove/hf(b1)':>13}"]
    for bsz, g, h, lo, hi in rows:
        lines.append(f"{bsz:>5} {g:>12.1f} {1e3 * bsz / g:>8.1f} {h:>10.1f} {1e3 * bsz / h:>8.1f} {g / h:>8.2f}x "
                     f"{f'{lo:.2f}-{hi:.2f}':>12} {g / hf_b1:>12.2f}x")
    print("\n".join(lines))  # noqa: T201


if __name__ == "__main__":
    main()
