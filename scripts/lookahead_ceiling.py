"""How fast lookahead could be at best, on this machine and on a workload's outputs (not a test).

    .venv/bin/python scripts/lookahead_ceiling.py --dataset code-edit --concurrency 16 --depths 0,4,16,r16 \
        [--retrieval] [--replay] [--others all|earlier|none] [--rounds 3] [--dtype bfloat16] [--num-prompts 16] [--max-tokens 128]

Plain decoding first gives each prompt's greedy output. Then, measured, bounds no drafter can pass:

- **The machine's** (``--depths d``): the engine with a drafter that knows the answer: every
  decoding sequence drafts its answer's next ``d`` tokens, a chain the model takes whole. Each
  depth runs against lookahead off on the same batches, the two engines' steps in turn
  (bench.inprocess.decode_interleaved): what drafts accepted at every position give at that batch
  size, the cost of the wider steps against the tokens they win.
- **Retrieval's** (``--retrieval``, and ``--depths rN`` in the engine; bench.retrieval_bound): at
  each step, over every earlier place where the last token occurs (in the request's prompt and
  output so far, and in other requests' outputs, ``--others``), the longest run that continues as
  the output does: what a drafter that looks its drafts up could take at best, had it every branch
  and known which one. A step appends that run plus the model's next token. ``--retrieval`` prints the tokens a
  step with drafts free, as 1 / mean over requests of (steps / tokens): a bench cell's speed is 1 /
  mean time per output token. ``rN`` drafts exactly that run (at most N tokens) in the engine.
  ``--replay`` gives the engine's own drafter the same outputs, in order (its global cache learns
  each answer as it goes, as at c=1), with drafts free: how close it comes.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
from collections.abc import Sequence

import torch

from bench.datasets import load_prompts
from bench.inprocess import decode_batch, decode_interleaved
from bench.jobs import prompt_token_ids
from bench.oracle_drafts import OracleSpeculator, drafter_steps
from bench.retrieval_bound import retrieval_runs, retrieval_steps
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.lookahead.drafter import Drafter, DrafterConfig
from engine.lookahead.numbering import DigitVocab
from engine.lookahead.speculator import GLOBAL_WINDOW
from engine.sampling_params import SamplingParams
from runtime.process import tune_gc

logger = logging.getLogger("lookahead_ceiling")


def tokens_a_step(prompts: list[list[int]], answers: dict[tuple[int, ...], list[int]], steps: list[int]) -> float:
    """1 / mean over requests of steps a decoded token (the first comes with the prefill): a bench
    cell's measure, whose speed is 1 / mean time per output token."""
    return 1 / statistics.mean(s / max(1, len(answers[tuple(p)]) - 1) for p, s in zip(prompts, steps))


def per_request(prompts: list[list[int]], answers: dict[tuple[int, ...], list[int]], steps: list[int]) -> str:
    return ", ".join(f"{(len(answers[tuple(p)]) - 1) / max(1, s):.1f}" for p, s in zip(prompts, steps))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="code-edit")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--skip-prompts", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=16, help="batch size of the machine's bound")
    ap.add_argument("--depths", default="", help="comma-separated: d (chains of d tokens), rN (retrieval's runs, <= N)")
    ap.add_argument("--retrieval", action="store_true", help="print retrieval's tokens a step from the outputs")
    ap.add_argument("--replay", action="store_true",
                    help="also the engine's drafter replayed over the outputs in order, drafts free (depth and "
                         "width: the engine's defaults), its tokens a step beside retrieval's")
    ap.add_argument("--others", default="all", choices=["all", "earlier", "none"],
                    help="other requests' outputs retrieval may draft from: all of them (a bound at any batch "
                         "size), those of the prompts before (c=1: what the global cache has seen), none")
    ap.add_argument("--dtype", default="bfloat16", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="", help="local HF directory (default: the bundled SmolLM2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3, help="times each depth runs its batches (the ratio's range)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    def engine(lookahead: bool) -> LLMEngine:
        return LLMEngine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype, lookahead=lookahead,
                                      num_kv_blocks=8192, max_num_seqs=256, max_num_batched_tokens=2048))

    depths = [x.strip() for x in args.depths.split(",") if x.strip()]
    off = engine(False)
    oracle = engine(True) if depths else None
    tune_gc()
    records = load_prompts(args.dataset)[args.skip_prompts:args.skip_prompts + args.num_prompts]
    prompts = [prompt_token_ids(off.tokenizer, p) for p in records]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    answers: dict[tuple[int, ...], list[int]] = {}
    for i in range(0, len(prompts), args.concurrency):  # the greedy outputs (and a warm-up)
        batch = prompts[i:i + args.concurrency]
        for ids, out in zip(batch, decode_batch(off, batch, params, f"ref-{i}").outputs):
            answers[tuple(ids)] = out
    print(f"{args.dataset}: {len(prompts)} prompts, {args.max_tokens} tokens, dtype {off.model.dtype}, "
          f"output tokens {statistics.mean(len(a) for a in answers.values()):.1f} a request")
    runs: dict[tuple[int, ...], list[int]] = {}
    if args.retrieval or any(d.startswith("r") for d in depths):
        for i, p in enumerate(prompts):
            key = tuple(p)
            before = {"all": prompts[:i] + prompts[i + 1:], "earlier": prompts[:i], "none": []}[args.others]
            runs[key] = retrieval_runs(p, answers[key], [answers[tuple(q)] for q in before])
        cap = EngineConfig().lookahead_max_depth
        per = [retrieval_steps(answers[tuple(p)], runs[tuple(p)]) for p in prompts]
        capped = [retrieval_steps(answers[tuple(p)], runs[tuple(p)], cap) for p in prompts]
        print(f"retrieval bound (others' outputs: {args.others}; drafts free): tokens a step "
              f"{tokens_a_step(prompts, answers, per):.2f} (1 / mean steps a token), "
              f"{tokens_a_step(prompts, answers, capped):.2f} with runs of at most {cap} (the engine's deepest "
              f"draft); per request {per_request(prompts, answers, per)}")
    if args.replay:
        cfg = EngineConfig()
        drafter = Drafter(DrafterConfig(window=min(cfg.lookahead_max_depth, GLOBAL_WINDOW)),
                          DigitVocab.from_tokenizer(off.tokenizer))
        steps = [drafter_steps(drafter, f"replay-{i}", p, answers[tuple(p)], cfg.lookahead_max_depth, cfg.lookahead_width)
                 for i, p in enumerate(prompts)]
        print(f"the drafter replayed (prompts in order, depth {cfg.lookahead_max_depth} x width {cfg.lookahead_width}, "
              f"drafts free): tokens a step {tokens_a_step(prompts, answers, steps):.2f}; per request "
              f"{per_request(prompts, answers, steps)}")
    if oracle is not None:
        assert oracle.speculator is not None
        base = oracle.speculator
        print(f"machine bound at c={args.concurrency}: each sequence drafts its answer's next d tokens "
              "(rN: the run retrieval could find, at most N); by TPOT: mean time a token of the batches, off / "
              "on (a bench cell's measure)")
        print(f"{'d':>4} | {'off tok/s':>9} {'oracle tok/s':>12} {'ratio':>7} {'range':>11} {'by TPOT':>10} | {'tokens/step':>11}")
        for d in depths:
            retrieval = d.startswith("r")
            oracle.speculator = OracleSpeculator(base, answers, int(d.removeprefix("r")), runs if retrieval else None)
            off_t = on_t = 0.0
            off_n = on_n = seq_steps = 0
            ratios, tpot_off, tpot_on = [], [], []
            for r in range(args.rounds):
                for i in range(0, len(prompts), args.concurrency):
                    batch = prompts[i:i + args.concurrency]
                    o, a = decode_interleaved([off, oracle], batch, params, f"d{d}-{r}-{i}")
                    if o.outputs != a.outputs or any(out != answers[tuple(p)] for p, out in zip(batch, a.outputs)):
                        logger.error("the oracle's drafts changed a greedy output (d=%s)", d)
                        return 1
                    off_t, off_n = off_t + o.seconds, off_n + o.tokens
                    on_t, on_n, seq_steps = on_t + a.seconds, on_n + a.tokens, seq_steps + a.seq_steps
                    ratios.append(a.tokens_per_second / o.tokens_per_second)
                    tpot_off.append(1 / o.tokens_per_second)
                    tpot_on.append(1 / a.tokens_per_second)
            print(f"{d:>4} | {off_n / off_t:>9.1f} {on_n / on_t:>12.1f} {(on_n / on_t) / (off_n / off_t):>6.2f}x "
                  f"{min(ratios):.2f}-{max(ratios):.2f}x {statistics.mean(tpot_off) / statistics.mean(tpot_on):>9.2f}x | "
                  f"{on_n / seq_steps:>11.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
