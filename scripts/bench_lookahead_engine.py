"""Lookahead on vs off inside one process, on any device (not a test).

    .venv/bin/python scripts/bench_lookahead_engine.py --dataset code-edit --concurrency 1,16 \\
        [--device cuda] [--dtype bfloat16] [--num-prompts 16 | 16,8] [--max-tokens 128] [--hf-prompt-lookup] \\
        [--prediction dataset|answer]

``scripts/bench_lookahead.py`` measures lookahead through the whole stack (gateway, gRPC, NIXL);
this one measures the engine alone, which is how it runs on a GPU machine where the stack's
services are not installed, and without the stack's noise. Two engines load the same model: one
drafts, one does not, so the drafting engine's global n-gram cache learns only from its own
outputs, as it would while serving (one engine serving both would learn each prompt's answer from
its lookahead-off run and draft it whole).

Each concurrency gets its own --num-prompts prompts (the drafting engine's global cache learns every
output, so a prompt replayed at another concurrency would be drafted whole), cut into batches of c,
all of a batch added at once; each batch runs on both engines at once, their steps taken in turn
(so a slow spell of this noisy machine falls on both; ``--sequential``: one engine after the
other, the order alternating batch by batch). Timed: the decode steps after every sequence of the
batch has its first token (tokens: every one after each sequence's first, equal for both engines;
bench.inprocess.decode_interleaved). Reported: decode tokens/s of each engine, their ratio (and the
range of the per-batch ratios), the ratio of whole-batch times (every step, prefills included: the
unbiased one, diluted by the prefills both compute alike), tokens per step; with
--hf-prompt-lookup, transformers ``generate`` with ``prompt_lookup_num_tokens`` at c=1 on the same
prompts and device. The two engines' greedy outputs
must be equal (lossless), or the run fails (the level where they part is named and not timed; the
others still run).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

import torch

from bench.baselines import HFModel, make_baseline
from bench.datasets import load_prompts
from bench.datasets.json_extract import SCHEMA
from bench.inprocess import Decode, decode_batch, decode_interleaved, decode_stream
from bench.jobs import prompt_token_ids, select_jobs
from bench.records import Job, Prompt
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.structured import StructuredSpec
from runtime.process import tune_gc

logger = logging.getLogger("bench_lookahead_engine")


def hf_prompt_lookup_tps(hf: HFModel, prompts: list[Prompt], prompt_ids: list[list[int]], max_tokens: int) -> float:
    """transformers' n-gram speculative decoding, one prompt at a time: decode tokens/s."""
    baseline = make_baseline("hf-prompt-lookup", hf)
    baseline.warm_up()
    tokens, seconds = 0, 0.0
    for i, (prompt, ids) in enumerate(zip(prompts, prompt_ids)):
        job = Job(index=i, prompt=prompt, prompt_ids=tuple(ids), max_tokens=max_tokens)
        record = baseline.send(job)
        tokens += len(record.output_ids or []) - 1
        seconds += record.end_time - record.chunk_times[0]
    return tokens / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="local HF directory (default: the bundled SmolLM2)")
    ap.add_argument("--dataset", default="code-edit", help="a bench dataset name or jsonl:PATH")
    ap.add_argument("--num-prompts", default="16",
                    help="prompts per concurrency (disjoint): one number, or one per --concurrency level")
    ap.add_argument("--skip-prompts", type=int, default=0)
    ap.add_argument("--seed", type=int, default=None,
                    help="shuffle the dataset with this seed before --skip-prompts, as `grove bench` does "
                         "(scripts/bench_lookahead.py uses seed 0: --seed 0 runs its prompts); default: "
                         "the dataset's order")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", default="1,16", help="comma-separated batch sizes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    ap.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "triton", "cpu"],
                    help="as the engine's flag (auto: Triton on CUDA, the C++ kernel on CPU)")
    ap.add_argument("--steady", action="store_true",
                    help="keep c requests in flight over all of a level's prompts (refilled as they finish), "
                         "prefills included in the timing, instead of batches of c added at once")
    ap.add_argument("--sequential", action="store_true",
                    help="run each batch on one engine, then the other (default: both at once, their steps in turn)")
    ap.add_argument("--hf-prompt-lookup", action="store_true", help="also time transformers prompt lookup at c=1")
    ap.add_argument("--json-schema", action="store_true",
                    help="structured output: every request under json-extract's schema (both engines)")
    ap.add_argument("--repetition-penalty", type=float, default=1.0, help="every request's (both engines)")
    ap.add_argument("--frequency-penalty", type=float, default=0.0, help="every request's (both engines)")
    ap.add_argument("--prediction", choices=["dataset", "answer"], default=None,
                    help="each request carries a prediction (OpenAI's Predicted Outputs), which the drafting engine "
                         "drafts from: the dataset's (code-edit: the code to edit), or the answer itself (the "
                         "ceiling: the engine that does not draft decodes it first, untimed)")
    ap.add_argument("--lookahead-max-depth", type=int, default=EngineConfig().lookahead_max_depth)
    ap.add_argument("--lookahead-width", type=int, default=EngineConfig().lookahead_width)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    levels = [int(x) for x in args.concurrency.split(",")]
    counts = [int(x) for x in args.num_prompts.split(",")]
    counts = counts * len(levels) if len(counts) == 1 else counts
    if len(counts) != len(levels):
        raise SystemExit(f"--num-prompts: one number or one per level ({len(levels)}), got {args.num_prompts}")
    firsts = [sum(counts[:k]) for k in range(len(levels) + 1)]  # level k's prompts: firsts[k]:firsts[k + 1]

    def engine(lookahead: bool) -> LLMEngine:
        return LLMEngine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype, lookahead=lookahead,
                                      attention_backend=args.attention_backend,
                                      num_kv_blocks=8192, max_num_seqs=256, max_num_batched_tokens=2048,
                                      lookahead_max_depth=args.lookahead_max_depth,
                                      lookahead_width=args.lookahead_width))

    off, on = engine(False), engine(True)
    tune_gc()  # as the workers do once their model is loaded
    if args.seed is None:
        records = load_prompts(args.dataset)[args.skip_prompts:args.skip_prompts + firsts[-1]]
        prompts = [prompt_token_ids(on.tokenizer, p) for p in records]
    else:  # the stack bench's pick: shuffled, sessions kept together, prompts over 2,048 tokens left out
        jobs = select_jobs(load_prompts(args.dataset), on.tokenizer, num=firsts[-1], warmup=0,
                           max_tokens=args.max_tokens, max_prompt_tokens=2048, seed=args.seed,
                           skip=args.skip_prompts).jobs
        records, prompts = [j.prompt for j in jobs], [list(j.prompt_ids) for j in jobs]
    if len(records) < firsts[-1]:
        raise SystemExit(f"{args.dataset} has too few prompts for {firsts[-1]} after {args.skip_prompts}")
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, repetition_penalty=args.repetition_penalty,
                            frequency_penalty=args.frequency_penalty,
                            structured=StructuredSpec("json_schema", json.dumps(SCHEMA)) if args.json_schema else None)
    # each prompt's own: with --prediction, its prediction's token ids (the engine that does not draft ignores them)
    if args.prediction == "answer":
        predicted = [tuple(ids) for ids in decode_batch(off, prompts, params, "answers").outputs]
    else:
        predicted = [tuple(on.tokenizer(r.prediction, add_special_tokens=False)["input_ids"]) if r.prediction else ()
                     for r in records]
    own = [dataclasses.replace(params, prediction=ids) if args.prediction and ids else params for ids in predicted]
    if args.prediction and all(p is params for p in own):
        raise SystemExit(f"--prediction: {args.dataset}'s prompts have none")
    warm = [prompt_token_ids(on.tokenizer, load_prompts(args.dataset)[-1])]  # a prompt no level uses
    decode_batch(off, warm, params, "warm-off")  # first-call costs (kernel compiles) out of the timing
    decode_batch(on, warm, params, "warm-on")
    print(f"{args.dataset}{f', predictions: {args.prediction}' if args.prediction else ''}: {args.num_prompts} prompts per "
          f"concurrency, {args.max_tokens} tokens, {args.device} "
          f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else ''} dtype {on.model.dtype}"
          + (f", repetition penalty {params.repetition_penalty:g}, frequency penalty {params.frequency_penalty:g}"
             if params.has_penalties else ""))
    c1_on = 0.0
    lossy: list[int] = []  # levels where lookahead changed a greedy output (the run fails; the others still run)
    # by TPOT: mean over batches of seconds a token, off / on (at c=1 a batch is a request: the
    # stack bench's decode ratio, scripts/bench_lookahead.py)
    print(f"{'c':>3} | {'off tok/s':>9} {'on tok/s':>9} {'on/off':>7} {'range':>13} {'by TPOT':>8} {'batch':>6} | "
          f"{'tok/seq-step':>12}")
    for k, c in enumerate(levels):
        level_prompts, level_params = prompts[firsts[k]:firsts[k + 1]], own[firsts[k]:firsts[k + 1]]
        totals = {False: [0, 0.0, 0, 0.0], True: [0, 0.0, 0, 0.0]}
        ratios, tpots = [], {False: [], True: []}
        spans = [(0, len(level_prompts))] if args.steady else [(i, i + c) for i in range(0, len(level_prompts), c)]
        for b, (lo, hi) in enumerate(spans):
            batch, batch_params = level_prompts[lo:hi], level_params[lo:hi]
            order = (False, True) if b % 2 == 0 else (True, False)

            def run(la: bool) -> Decode:
                engine, tag = (on if la else off), f"c{c}-b{b}-{la}"
                return (decode_stream(engine, batch, batch_params, c, tag) if args.steady
                        else decode_batch(engine, batch, batch_params, tag))

            if args.steady or args.sequential:
                got = {la: run(la) for la in order}
            else:
                got = dict(zip(order, decode_interleaved([on if la else off for la in order], batch, batch_params,
                                                         f"c{c}-b{b}")))
            if got[True].outputs != got[False].outputs:
                i, (a, z) = next((i, o) for i, o in enumerate(zip(got[False].outputs, got[True].outputs)) if o[0] != o[1])
                at = next((j for j, (x, y) in enumerate(zip(a, z)) if x != y), min(len(a), len(z)))
                logger.error("lookahead changed a greedy output (c=%d, batch %d): prompt %d of the batch (%d tokens), "
                             "from output token %d of %d/%d (off/on)", c, b, i, len(batch[i]), at, len(a), len(z))
                lossy.append(c)
                break
            for la, d in got.items():
                totals[la][0] += d.tokens
                totals[la][1] += d.seconds
                totals[la][2] += d.steps
                totals[la][3] += d.batch_seconds
                tpots[la].append(1 / d.tokens_per_second)
            ratios.append(got[True].tokens_per_second / got[False].tokens_per_second)
        if c in lossy:
            print(f"{c:>3} | lookahead changed a greedy output: not timed", flush=True)
            continue
        tps = {la: t[0] / t[1] for la, t in totals.items()}
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}x"
        if c == 1:
            c1_on = tps[True]
        by_tpot = sum(tpots[False]) / sum(tpots[True])
        print(f"{c:>3} | {tps[False]:>9.1f} {tps[True]:>9.1f} {tps[True] / tps[False]:>6.2f}x "
              f"{spread:>13} {by_tpot:>7.2f}x {totals[False][3] / totals[True][3]:>5.2f}x | "
              f"{totals[True][0] / totals[True][2] / c:>12.2f}",
              flush=True)
    st = on.speculator.stats if on.speculator is not None else None
    if st is not None:
        print(f"drafts {st.num_drafts}, draft tokens {st.num_draft_tokens}, accepted {st.num_accepted_tokens}")
    if args.hf_prompt_lookup:
        hf = HFModel.load(on.config.model_dir, threads=args.threads, dtype=str(on.model.dtype).removeprefix("torch."),
                          device=args.device)
        c1 = levels.index(1) if 1 in levels else 0  # the c=1 level's prompts, else the first level's
        span = slice(firsts[c1], firsts[c1 + 1])
        hf_tps = hf_prompt_lookup_tps(hf, records[span], prompts[span], args.max_tokens)
        ratio = f", lookahead on c=1 / it: {c1_on / hf_tps:.2f}x" if c1_on else ""
        print(f"transformers prompt lookup c=1: {hf_tps:.1f} tok/s (decode){ratio}")
    return 1 if lossy else 0


if __name__ == "__main__":
    sys.exit(main())
