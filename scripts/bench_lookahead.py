"""Lookahead decoding on vs off vs transformers prompt lookup, side by side in one run: issue #5.

    .venv/bin/python scripts/bench_lookahead.py [--num-prompts 16] [--max-tokens 128] [--concurrency 1,4,16]
        [--workloads code-edit,shakespeare-quote,sharegpt] [--base-url URL] [--out-dir DIR]

One stack (started here unless --base-url names a running gateway). Every request says whether it
wants lookahead (the gateway's ``lookahead`` body field), so "on" and "off" run on the same
workers, prompts and load. For each workload and concurrency, ``grove bench`` runs lookahead on
and off in ``--rounds`` rounds on disjoint prompts, on first in odd rounds and off first in even
ones; at concurrency 1 every round also runs transformers ``generate`` with
``prompt_lookup_num_tokens`` (in-process, one request at a time, after on and off), so on/prompt
lookup is a mean over rounds like on/off. Greedy outputs are checked against it.

Fairness:
- each concurrency level gets its own prompts (disjoint: ``--skip-prompts``): lookahead's global
  n-gram cache learns every output, so a replayed prompt would have its whole answer drafted;
- before the measured runs of a level, each of its prompts is sent once with lookahead off and 2
  output tokens (off requests teach the n-gram cache nothing), so "on" and "off" both find the
  prompt in the prefix caches: otherwise whichever runs second gets a cheaper prefill;
- transformers has no cross-request cache, so on/prompt-lookup is judged on decode speed
  (1 / mean TPOT, which leaves the prefill out); its tokens/s ratio is shown beside it.

Goals (issue #5): copy-heavy (code-edit, shakespeare-quote) on/off >= 3.0x at c=1 and >= 2.0x at
c=16, on/prompt-lookup >= 1.3x at c=1; chat (sharegpt) on/off >= 0.97x at every concurrency.
Ratios are judged on decode speed (1 / mean TPOT), as speculative decoding is: lookahead leaves the
prefill alone, and at c=1 with short outputs the prefill's share would dilute any decode speed-up.
The end-to-end tokens/s ratio (prefill included) is printed beside it.
"Tokens per step" = output tokens per decode step of a request (1 + accepted drafts per step).
Writes each run's result (JSON + plots) and summary.json to --out-dir; prints the ratio table.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from bench.baselines import HFModel, make_baseline
from bench.client import OpenAIHTTPBackend
from bench.config import BenchConfig, LoadSpec, Target
from bench.datasets import load_prompts
from bench.jobs import select_jobs
from bench.orchestrate import run_bench
from bench.report import text_table
from bench.result import metric_value
from bench.runner import run_load
from engine.paths import default_model_dir

logger = logging.getLogger("bench_lookahead")
KIND = {"code-edit": "copy", "shakespeare-quote": "copy", "sharegpt": "chat"}
ON, OFF, HF_PL = "lookahead-on", "lookahead-off", "hf-prompt-lookup"


def goals(kind: str, concurrency: int) -> tuple[float | None, float | None]:
    """(on/off goal, on/prompt-lookup goal) of issue #5 for this cell; None where it sets none."""
    if kind == "chat":
        return 0.97, None
    on_off = 3.0 if concurrency == 1 else 2.0 if concurrency == 16 else None
    return on_off, 1.3 if concurrency == 1 else None


def tokens_per_step(run: dict[str, Any]) -> float | None:
    """Output tokens per decode step: each request's first token comes from prefill, every later
    step yields one token plus the drafts it accepted."""
    m = run["metrics"]
    decoded = m["output_tokens"] - m["completed"]
    accepted = m["accepted_prediction_tokens"]
    if accepted is None or decoded <= accepted:
        return None
    return decoded / (decoded - accepted)


async def _send_once(url: str, jobs: list[Any]) -> int:
    backend = OpenAIHTTPBackend(url, name="prime", extra_body={"lookahead": False})
    await backend.start()
    try:
        jobs = [dataclasses.replace(j, max_tokens=2, after=None) for j in jobs]
        out = await run_load(backend, jobs, LoadSpec(concurrency=4))
    finally:
        await backend.aclose()
    return sum(not r.ok for r in out.records)


def prime(url: str, config: BenchConfig, tokenizer: Any) -> None:
    """Every prompt the run will send (measured and warm-up), once, lookahead off, 2 tokens: into
    the prefix caches (2, not 1: a request finished by its first token is not written back)."""
    sel = select_jobs(load_prompts(config.dataset), tokenizer, num=config.num_prompts, warmup=config.warmup,
                      max_tokens=2, max_prompt_tokens=config.max_prompt_tokens, seed=config.seed, skip=config.skip_prompts)
    failed = sum(asyncio.run(_send_once(url, jobs)) for jobs in (sel.jobs, sel.warmup) if jobs)
    if failed:
        logger.warning("%s: %d priming requests failed", config.label, failed)


def on_equals_off(on: dict[str, Any], off: dict[str, Any]) -> bool | None:
    """Lossless, checked directly: every prompt's greedy token ids with lookahead equal those without."""
    ids = [{r["index"]: r["output_ids"] for r in run["requests"] if r["ok"]} for run in (on, off)]
    common = ids[0].keys() & ids[1].keys()
    if not common or any(ids[0][i] is None for i in common):
        return None
    return all(ids[0][i] == ids[1][i] for i in common)


def cell(doc: dict[str, Any], workload: str, concurrency: int) -> dict[str, Any]:
    runs = {r["name"]: r for r in doc["runs"]}
    on, off, hf = runs[ON], runs[OFF], runs.get(HF_PL)
    tps = {name: metric_value(r, "output_throughput") for name, r in runs.items()}
    on_off_goal, on_hf_goal = goals(KIND[workload], concurrency)
    tps_ratio = tps[ON] / tps[OFF] if tps[ON] and tps[OFF] else None
    tpot = {name: metric_value(r, "tpot_ms", "mean") for name, r in runs.items()}
    ratio = tpot[OFF] / tpot[ON] if tpot[ON] and tpot[OFF] else None  # decode speed: what lookahead changes
    hf_ratio = tpot[HF_PL] / tpot[ON] if hf is not None and tpot[ON] and tpot[HF_PL] else None  # decode speed
    hf_tps_ratio = tps[ON] / tps[HF_PL] if hf is not None and tps[ON] and tps[HF_PL] else None
    return {
        "workload": workload, "kind": KIND[workload], "concurrency": concurrency, "prompts": doc["dataset"]["num_prompts"],
        "off_tok_s": tps[OFF], "on_tok_s": tps[ON], "on_over_off_tok_s": tps_ratio,
        "on_over_off": ratio, "on_off_goal": on_off_goal,
        "on_off_met": None if on_off_goal is None or ratio is None else ratio >= on_off_goal,
        "tokens_per_step": tokens_per_step(on), "acceptance_rate": metric_value(on, "acceptance_rate"),
        "tokens_per_chunk": metric_value(on, "tokens_per_chunk"),
        "hf_pl_tok_s": tps.get(HF_PL), "on_over_hf_pl_decode": hf_ratio, "on_over_hf_pl_tok_s": hf_tps_ratio,
        "on_hf_goal": on_hf_goal, "on_hf_met": None if on_hf_goal is None or hf_ratio is None else hf_ratio >= on_hf_goal,
        "tpot_ms": {"on": tpot[ON], "off": tpot[OFF], "hf_pl": tpot.get(HF_PL)},
        "ttft_ms_p50": {name: metric_value(r, "ttft_ms", "p50") for name, r in runs.items()},
        "greedy_ok": doc["greedy_check"]["ok"], "on_equals_off": on_equals_off(on, off),
    }


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell from its rounds: geometric means of the ratios (each round's on, off and, at c=1,
    transformers ran in the same minutes), arithmetic means of the rates; lossless only if every
    round was."""
    if len(rounds) == 1:
        return rounds[0] | {"rounds": rounds}

    def mean(key: str, geometric: bool = False) -> float | None:
        vals = [r[key] for r in rounds if r[key] is not None]
        if not vals:
            return None
        return math.prod(vals) ** (1 / len(vals)) if geometric else sum(vals) / len(vals)

    out = dict(rounds[0])
    for key in ("off_tok_s", "on_tok_s", "tokens_per_step", "acceptance_rate", "tokens_per_chunk", "hf_pl_tok_s"):
        out[key] = mean(key)
    for key in ("on_over_off", "on_over_off_tok_s", "on_over_hf_pl_decode", "on_over_hf_pl_tok_s"):
        out[key] = mean(key, geometric=True)
    out["prompts"] = sum(r["prompts"] for r in rounds)
    out["on_off_met"] = None if out["on_off_goal"] is None or out["on_over_off"] is None else out["on_over_off"] >= out["on_off_goal"]
    hf = out["on_over_hf_pl_decode"]
    out["on_hf_met"] = None if out["on_hf_goal"] is None or hf is None else hf >= out["on_hf_goal"]
    for key in ("greedy_ok", "on_equals_off"):
        vals = [r[key] for r in rounds if r[key] is not None]
        out[key] = None if not vals else all(vals)
    out["rounds"] = rounds
    return out


def table(cells: list[dict[str, Any]]) -> str:
    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else f"{v:{spec}}"

    def spread(c: dict[str, Any], key: str = "on_over_off") -> str:  # the rounds' own decode ratios
        vals = [r[key] for r in c.get("rounds", []) if r[key] is not None]
        return f" ({min(vals):.2f}-{max(vals):.2f})" if len(vals) > 1 else ""

    def verdict(goal: float | None, met: bool | None) -> str:
        return "-" if goal is None else f">= {goal:g}x {'met' if met else 'NOT met'}"

    rows = [[c["workload"], f"c={c['concurrency']}", str(c["prompts"]), f(c["off_tok_s"], ".1f"), f(c["on_tok_s"], ".1f"),
             f(c["on_over_off_tok_s"], ".2f") + "x", f(c["on_over_off"], ".2f") + "x" + spread(c),
             verdict(c["on_off_goal"], c["on_off_met"]),
             f(c["tokens_per_step"], ".2f"), f(c["acceptance_rate"], ".0%"), f(c["hf_pl_tok_s"], ".1f"),
             f(c["on_over_hf_pl_tok_s"], ".2f") + ("x" if c["on_over_hf_pl_tok_s"] else ""),
             f(c["on_over_hf_pl_decode"], ".2f") + ("x" + spread(c, "on_over_hf_pl_decode") if c["on_over_hf_pl_decode"] else ""),
             verdict(c["on_hf_goal"], c["on_hf_met"]),
             {True: "yes", False: "NO", None: "-"}[c["on_equals_off"]],
             {True: "yes", False: "NO", None: "-"}[c["greedy_ok"]]] for c in cells]
    header = ["workload", "load", "prompts", "off tok/s", "on tok/s", "on/off", "on/off decode", "goal", "tok/step", "accept",
              "hf-pl tok/s", "on/hf-pl", "on/hf-pl decode", "goal", "on=off", "greedy=HF"]
    return text_table(header, rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="code-edit,shakespeare-quote,sharegpt",
                   help=f"comma-separated, of {sorted(KIND)} (default: all three)")
    p.add_argument("--num-prompts", type=int, default=16, help="prompts per workload and concurrency (default 16: "
                   "enough to keep 16 requests in flight)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated (default 1,4,16)")
    p.add_argument("--prompt-lookup-num-tokens", type=int, default=10, help="transformers' draft length (default 10)")
    p.add_argument("--torch-threads", type=int, default=2, help="threads of the transformers baseline (default 2)")
    p.add_argument("--threads-per-worker", type=int, default=2, help="torch threads of each stack worker (default 2)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="of the stack and of transformers (default float32, the bundled model's own). In bf16 "
                        "a wide verify step costs about what a 1-token step does on this CPU (AMX)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per workload and concurrency, each on its own "
                   "prompts, alternating which of on and off runs first (default 2): the machine's drift over a "
                   "minute then falls on both")
    p.add_argument("--base-url", help="a running Grove gateway instead of starting a stack")
    p.add_argument("--out-dir", help="default results/bench-lookahead-TIME")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in ("bench", "bench_lookahead"):
        logging.getLogger(name).setLevel(logging.INFO)
    workloads = args.workloads.split(",")
    unknown = set(workloads) - set(KIND)
    if unknown:
        p.error(f"unknown workloads {sorted(unknown)}; choose from {sorted(KIND)}")
    levels = [int(c) for c in args.concurrency.split(",")]
    started, load = dt.datetime.now().astimezone(), os.getloadavg()[0]
    out_dir = Path(args.out_dir or f"results/bench-lookahead-{started:%Y%m%d-%H%M%S}")

    with contextlib.ExitStack() as stop:
        url = args.base_url
        if url is None:
            from launcher.stack import Stack, StackConfig

            stack = Stack(StackConfig(threads_per_worker=args.threads_per_worker, dtype=args.dtype,
                                      log_dir=str(out_dir / "stack-logs")))
            url = stop.enter_context(stack).http_url
        hf = HFModel.load(default_model_dir(), threads=args.torch_threads, dtype=args.dtype)
        baseline = make_baseline(HF_PL, hf, args.prompt_lookup_num_tokens)
        # token ids in the response (vLLM's return_token_ids): the greedy check compares ids, not re-tokenized text
        targets = (Target(ON, url, {"lookahead": True, "return_token_ids": True}),
                   Target(OFF, url, {"lookahead": False, "return_token_ids": True}))
        cells = []
        for workload in workloads:
            for i, c in enumerate(levels):
                rounds = []
                for r in range(args.rounds):
                    # disjoint prompts per level and round: the measured ones, the warm-up, and slack for
                    # skipped long prompts
                    config = BenchConfig(dataset=workload, targets=targets if r % 2 == 0 else targets[::-1],
                                         loads=(LoadSpec(concurrency=c),), num_prompts=args.num_prompts,
                                         skip_prompts=(i * args.rounds + r) * 2 * (args.num_prompts + 1),
                                         max_tokens=args.max_tokens, label=f"{workload} c={c} round {r + 1}",
                                         progress=False)
                    prime(url, config, hf.tokenizer)
                    doc = run_bench(config, baselines=[baseline] if c == 1 else [], hf=hf,
                                    out=out_dir / f"{workload}-c{c}-r{r + 1}.json")
                    rounds.append(cell(doc, workload, c))
                    logger.info("%s c=%d round %d: on/off decode %s", workload, c, r + 1, rounds[-1]["on_over_off"])
                cells.append(combine(rounds))
    load = (load, os.getloadavg()[0])  # the machine may be shared: anything else running shows here
    print(table(cells))  # noqa: T201
    print(f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end")  # noqa: T201
    summary = {"tool": "scripts/bench_lookahead.py", "created_at": started.isoformat(timespec="seconds"),
               "args": vars(args), "load_average_1min": load, "cells": cells}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"results in {out_dir}")  # noqa: T201
    return 0 if all(c["greedy_ok"] is not False and c["on_equals_off"] is not False for c in cells) else 1


if __name__ == "__main__":
    raise SystemExit(main())
