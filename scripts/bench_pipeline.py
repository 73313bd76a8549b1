"""Pipeline latency on the bundled model, side by side in one run (not a test): issue #4's figures.

    .venv/bin/python scripts/bench_pipeline.py [--prefix-tokens 2000] [--repeats 3] [--new 128] [--threads 2]

1. Engine alone: greedy generations of --new tokens in-process (LLMEngine, lookahead off,
   --threads torch threads); time per output token. They take turns with the pipeline's TPOT runs
   (below), one pair at a time, so drifts in a shared machine's speed hit both alike; the stack
   sits idle while the engine alone runs.
2. The stack (kvstore, 1 prefill, 1 decode worker with --threads threads each, gateway), over HTTP:
   - TTFT cold: a --prefix-tokens token prefix of Shakespeare never sent before, then a short
     suffix. TTFT warm: the same prefix with another suffix, so the prefill worker
     finds the prefix's blocks in the kvstore. --repeats fresh prefixes; medians and warm/cold.
   - TPOT: the engine-alone prompt and generation through the gateway at concurrency 1, with
     TPOT = (E2E - TTFT) / (tokens - 1); pipeline/engine on the medians, and the median of the
     per-pair ratios.
   - KV handoff: the cold and warm requests ask for 2 tokens, so the decode worker pulls each
     whole prompt's KV; bytes and seconds from its "kv pull" log lines.
Goals (issue #4): warm TTFT <= 20% of cold; pipeline TPOT within 15% of the engine's.
Prints a table and writes JSON (--out).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import logging
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from bench.client import OpenAIHTTPBackend
from bench.datasets.shakespeare import read_lines
from bench.metrics import e2e_s, tpot_s, ttft_s
from bench.records import Job, Prompt, RequestRecord
from bench.report import text_table
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.tokenizer import load_tokenizer
from launcher.stack import Stack, StackConfig

logger = logging.getLogger("bench_pipeline")
PULL_LINE = re.compile(r"kv pull: (\d+) blocks, (\d+) bytes over (\w+) in ([0-9.]+) s")
TTFT_GOAL, TPOT_GOAL = 0.20, 1.15


def shakespeare_prefixes(tokenizer: Any, count: int, num_tokens: int,
                         tpot_prompt_tokens: int) -> tuple[list[list[int]], list[int]]:
    """``count`` disjoint ``num_tokens``-token spans of the text, and a shorter one after them."""
    text = "\n".join(read_lines())
    spans, pos = [], 0
    for want in [num_tokens] * count + [tpot_prompt_tokens]:
        chunk = text[pos: pos + want * 8]  # ~4 characters a token: twice what is needed
        ids = tokenizer.encode(chunk, add_special_tokens=False)
        if len(ids) < want:
            raise ValueError(f"{len(ids)} tokens in {len(chunk)} characters, need {want}")
        spans.append(ids[:want])
        pos += len(chunk)  # spans never overlap: each prefix is new to the kvstore
    return spans[:-1], spans[-1]


def suffix(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# ---- the engine alone --------------------------------------------------------------------------
class EngineAlone:
    """Greedy generations in-process (LLMEngine, lookahead off), timed as a client would time them."""

    def __init__(self, threads: int) -> None:
        self.engine = LLMEngine(EngineConfig(num_threads=threads, num_kv_blocks=256, lookahead=False))
        self.runs = 0

    def generate(self, prompt: list[int], new: int) -> dict[str, float]:
        params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
        self.runs += 1
        start = time.perf_counter()
        self.engine.add_request(f"alone-{self.runs}", prompt, params)
        first, produced = None, 0
        while self.engine.has_work:
            produced += sum(len(o.new_tokens) for o in self.engine.step())
            if first is None and produced:
                first = time.perf_counter()
        end = time.perf_counter()
        assert first is not None and produced == new, (produced, new)
        return {"ttft_ms": (first - start) * 1e3, "tpot_ms": (end - first) / (new - 1) * 1e3}


# ---- through the gateway -----------------------------------------------------------------------
async def send(backend: OpenAIHTTPBackend, name: str, ids: list[int], max_tokens: int) -> RequestRecord:
    job = Job(index=0, prompt=Prompt(id=name, text=""), prompt_ids=tuple(ids), max_tokens=max_tokens)
    record = await backend.send(job)
    if record.error:
        raise RuntimeError(f"{name}: {record.error}")
    return record


def first_token(r: RequestRecord) -> dict[str, Any]:
    ttft = ttft_s(r)
    assert ttft is not None, "a successful request streamed a token"
    return {"ttft_ms": ttft * 1e3, "prompt_tokens": r.input_tokens, "cached_tokens": r.usage.cached_tokens}


def pulls_since(log: Path, offset: int) -> list[dict[str, Any]]:
    text = log.read_bytes()[offset:].decode("utf-8", "replace")
    return [{"blocks": int(b), "bytes": int(n), "plane": plane, "seconds": float(s), "gb_per_s": int(n) / float(s) / 1e9}
            for b, n, plane, s in PULL_LINE.findall(text)]


async def pipeline(stack: Stack, alone: EngineAlone, tokenizer: Any, prefixes: list[list[int]], tpot_prompt: list[int],
                   new: int, repeats: int, tpot_repeats: int, write_back_wait_s: float) -> dict[str, Any]:
    # Plain decoding (lookahead off) and exact lengths (no EOS), as the engine-alone run.
    backend = OpenAIHTTPBackend(stack.http_url, name="grove", extra_body={"lookahead": False, "ignore_eos": True})
    await backend.start()
    log = stack.dir / "decode-0.log"
    try:
        await send(backend, "warm-up", tpot_prompt[:64], 2)  # connections, the first KV pull's NIXL peer set-up
        offset = log.stat().st_size
        # max_tokens 2, not 1: a request finished by its first token is not written back to the
        # kvstore; with 2 its KV also goes to the decode worker, which is the handoff measured.
        cold, warm = [], []
        for i, prefix in enumerate(prefixes):
            c = await send(backend, f"cold-{i}", prefix + suffix(tokenizer, f"\n\nQuestion {i}: who speaks first?"), 2)
            await asyncio.sleep(write_back_wait_s)  # the prefill worker writes the prefix back in the background
            w = await send(backend, f"warm-{i}", prefix + suffix(tokenizer, f"\n\nQuestion {i}: who speaks last?"), 2)
            cold.append(first_token(c))
            warm.append(first_token(w))
            logger.info("prefix %d: cold TTFT %.0f ms, warm %.0f ms (%s cached)", i, cold[-1]["ttft_ms"],
                        warm[-1]["ttft_ms"], w.usage.cached_tokens)
        await asyncio.sleep(0.5)  # a pull's log line is written after the pull; let it reach the file
        pulls = pulls_since(log, offset)

        # TPOT: the engine alone and the pipeline take turns, so slow drifts in the machine's speed
        # (it may be shared) hit both alike; the stack is idle while the engine alone runs.
        alone.generate(tpot_prompt, new)  # warm-up
        await send(backend, "tpot-warm-up", tpot_prompt, 8)
        tpots, alone_runs = [], []
        for i in range(tpot_repeats):
            alone_runs.append(alone.generate(tpot_prompt, new))
            r = await send(backend, f"tpot-{i}", tpot_prompt, new)
            assert r.output_tokens == new, (r.output_tokens, new)
            ttft, tpot = ttft_s(r), tpot_s(r)
            assert ttft is not None and tpot is not None
            tpots.append({"ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3, "e2e_ms": e2e_s(r) * 1e3,
                          "chunks": len(r.chunk_times)})
            logger.info("TPOT pair %d: engine alone %.1f ms, pipeline %.1f ms", i, alone_runs[-1]["tpot_ms"], tpot * 1e3)
    finally:
        await backend.aclose()
    return {"cold": cold, "warm": warm, "tpot": tpots, "alone": alone_runs, "handoff": pulls}


def summarize(piped: dict[str, Any]) -> dict[str, Any]:
    cold = median([r["ttft_ms"] for r in piped["cold"]])
    warm = median([r["ttft_ms"] for r in piped["warm"]])
    piped_tpot, alone_tpot = [r["tpot_ms"] for r in piped["tpot"]], [r["tpot_ms"] for r in piped["alone"]]
    pulls = piped["handoff"]
    return {
        "ttft_cold_ms": cold, "ttft_warm_ms": warm, "warm_over_cold": warm / cold if cold and warm else None,
        "warm_cached_tokens": [r["cached_tokens"] for r in piped["warm"]],
        "tpot_engine_ms": statistics.median(alone_tpot), "tpot_pipeline_ms": statistics.median(piped_tpot),
        "tpot_pipeline_over_engine": statistics.median(piped_tpot) / statistics.median(alone_tpot),
        "tpot_pair_ratios": [p / a for p, a in zip(piped_tpot, alone_tpot)],
        "handoff_bytes": median([p["bytes"] for p in pulls]), "handoff_ms": median([p["seconds"] * 1e3 for p in pulls]),
        "handoff_gb_per_s": median([p["gb_per_s"] for p in pulls]),
        "handoff_plane": sorted({p["plane"] for p in pulls}),
    }


def report(s: dict[str, Any], args: argparse.Namespace) -> str:
    def f(v: float | None, spec: str = ".1f") -> str:
        return "-" if v is None else f"{v:{spec}}"

    ratio, tratio = s["warm_over_cold"], s["tpot_pipeline_over_engine"]
    pairs = s["tpot_pair_ratios"]
    pair = statistics.median(pairs)
    rows = [
        ["TTFT, prefix in kvstore vs cold", f"{f(s['ttft_warm_ms'], '.0f')} ms", f"{f(s['ttft_cold_ms'], '.0f')} ms",
         f"{f(ratio and ratio * 100, '.1f')}%", f"<= {TTFT_GOAL:.0%}",
         "met" if ratio is not None and ratio <= TTFT_GOAL else "NOT met"],
        ["TPOT at c=1, pipeline vs engine alone (median)", f"{f(s['tpot_pipeline_ms'])} ms",
         f"{f(s['tpot_engine_ms'])} ms", f"{tratio:.3f}x", f"<= {TPOT_GOAL:.2f}x",
         "met" if tratio <= TPOT_GOAL else "NOT met"],
        ["TPOT at c=1, median of the pairs' ratios", f"{min(pairs):.3f}x-", f"{max(pairs):.3f}x",
         f"{pair:.3f}x", f"<= {TPOT_GOAL:.2f}x", "met" if pair <= TPOT_GOAL else "NOT met"],
        ["KV handoff (decode worker pull)", f"{f(s['handoff_gb_per_s'], '.2f')} GB/s",
         f"{f(s['handoff_bytes'] and s['handoff_bytes'] / 2**20, '.1f')} MiB in {f(s['handoff_ms'], '.1f')} ms",
         "/".join(s["handoff_plane"]) or "-", "-", "-"],
    ]
    head = (f"pipeline on {args.model_name}: prefix {args.prefix_tokens} tokens x {args.repeats} fresh prefixes; "
            f"{args.new} new tokens greedy x {args.tpot_repeats}, taking turns with the engine alone "
            f"(pair ratios {', '.join(f'{r:.2f}' for r in s['tpot_pair_ratios'])}); "
            f"{args.threads} torch threads per worker; workers' own prefix caches "
            f"{args.worker_prefix_cache}; warm requests' cached tokens {s['warm_cached_tokens']}; 1-minute load "
            f"average {s['load_average_1min'][0]:.1f} at the start, {s['load_average_1min'][1]:.1f} at the end")
    return head + "\n" + text_table(["measure", "contender", "baseline", "ratio", "goal", ""], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix-tokens", type=int, default=2000, help="cached prefix length (default 2000)")
    p.add_argument("--repeats", type=int, default=3, help="fresh prefixes, cold and warm (default 3)")
    p.add_argument("--tpot-repeats", type=int, default=5,
                   help="generations through the pipeline, each paired with one by the engine alone (default 5)")
    p.add_argument("--new", type=int, default=128, help="output tokens of the TPOT runs (default 128)")
    p.add_argument("--tpot-prompt-tokens", type=int, default=256, help="prompt of the TPOT runs (default 256)")
    p.add_argument("--threads", type=int, default=2, help="torch threads: engine alone and each worker (default 2)")
    p.add_argument("--write-back-wait", type=float, default=1.0, metavar="S",
                   help="pause between a cold request and its warm one, for the kvstore write-back (default 1)")
    p.add_argument("--worker-prefix-cache", choices=["on", "off"], default="off",
                   help="the workers' own prefix caches; off (default): a warm prefix can only come from the kvstore")
    p.add_argument("--out", help="result JSON (default results/bench-pipeline-TIME.json)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    started, load = dt.datetime.now().astimezone(), os.getloadavg()[0]

    config = StackConfig(threads_per_worker=args.threads, extra_worker_args=("--prefix-caching", args.worker_prefix_cache))
    stack = Stack(config)
    args.model_name = Path(stack.model_dir).name
    tokenizer = load_tokenizer(stack.model_dir)
    prefixes, tpot_prompt = shakespeare_prefixes(tokenizer, args.repeats, args.prefix_tokens, args.tpot_prompt_tokens)

    logger.info("TPOT runs: %d-token prompt, %d new tokens, %d threads", len(tpot_prompt), args.new, args.threads)
    alone = EngineAlone(args.threads)
    with stack:
        piped = asyncio.run(pipeline(stack, alone, tokenizer, prefixes, tpot_prompt, args.new, args.repeats,
                                     args.tpot_repeats, args.write_back_wait))
    del alone
    gc.collect()
    s = summarize(piped)
    s["load_average_1min"] = [load, os.getloadavg()[0]]  # the machine may be shared: anything else running shows here
    print(report(s, args))  # noqa: T201

    out = Path(args.out or f"results/bench-pipeline-{started:%Y%m%d-%H%M%S}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"tool": "scripts/bench_pipeline.py", "created_at": started.isoformat(timespec="seconds"),
           "args": {k: v for k, v in vars(args).items()}, "stack": {"num_prefill": config.num_prefill,
           "num_decode": config.num_decode, "threads_per_worker": config.threads_per_worker, "nixl": config.nixl,
           "extra_worker_args": list(config.extra_worker_args)},
           "summary": s, "pipeline": piped}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")  # noqa: T201


if __name__ == "__main__":
    main()
