"""Lookahead drafting from a corpus of earlier answers, side by side with lookahead without one and
lookahead off, in one process (not a test).

    .venv/bin/python scripts/bench_lookahead_corpus.py [--dataset sharegpt] [--num-prompts 8]
        [--concurrency 1,4] [--max-tokens 128] [--dtype float32|bfloat16]

A deployment's answers repeat (FAQ, support, RAG over the same documents). A decode worker started
with the answers it gave before as its ``--lookahead-corpus`` drafts them from its first request,
where its global n-gram trie starts empty. Here an engine with lookahead off answers the prompts
greedily (the history), written as a corpus (JSONL); then three fresh engines answer the same
prompts in batches of c, their steps taken in turn (bench.inprocess.decode_interleaved, so a slow
spell of the machine falls on all three): lookahead off, on without a corpus, on with it. Each
output must equal the history's (lossless), or the run fails. Reported per concurrency: decode
tokens/s of each, the ratios to off, tokens per sequence step.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

from bench.datasets import load_prompts
from bench.inprocess import decode_batch, decode_interleaved
from bench.jobs import prompt_token_ids
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.paths import default_model_dir
from engine.sampling_params import SamplingParams

logger = logging.getLogger("bench_lookahead_corpus")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="sharegpt")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--concurrency", default="1,4")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--model", default=str(default_model_dir()))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = EngineConfig(model=args.model, dtype=args.dtype, num_kv_blocks=1024, max_num_seqs=16)
    history = LLMEngine(dataclasses.replace(config, lookahead=False))
    levels = [int(x) for x in args.concurrency.split(",")]
    # each concurrency its own prompts: the drafting engines' global tries learn every answer, so a
    # prompt replayed at another concurrency would be drafted whole without a corpus
    n = args.num_prompts
    dataset = load_prompts(args.dataset)
    if len(dataset) < n * len(levels):
        raise SystemExit(f"{args.dataset} has {len(dataset)} prompts; {n} for each of {len(levels)} concurrencies needs more")
    prompts = [prompt_token_ids(history.tokenizer, pr) for pr in dataset[:n * len(levels)]]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    answers = decode_batch(history, prompts, params, "history").outputs
    folder = Path(tempfile.mkdtemp(prefix="grove-corpus-"))
    corpus = folder / "answers.jsonl"
    corpus.write_text("".join(json.dumps({"text": history.tokenizer.decode(a)}) + "\n" for a in answers))
    del history
    engines = [LLMEngine(dataclasses.replace(config, lookahead=False)), LLMEngine(config),
               LLMEngine(dataclasses.replace(config, lookahead_corpus=(str(corpus),)))]
    names = ["off", "on", "on+corpus"]
    rows = []
    for level, c in enumerate(levels):
        totals = {name: [0, 0.0, 0] for name in names}  # tokens, seconds, sequence steps
        for start in range(level * n, (level + 1) * n, c):
            end = min(start + c, (level + 1) * n)
            runs = decode_interleaved(engines, prompts[start:end], params, f"c{c}-{start}")
            for name, run in zip(names, runs):
                if run.outputs != answers[start:end]:
                    raise SystemExit(f"c={c}: {name}'s greedy output differs from plain decoding's (not lossless)")
                t = totals[name]
                t[0], t[1], t[2] = t[0] + run.tokens, t[1] + run.seconds, t[2] + run.seq_steps
        rate = {name: t[0] / t[1] for name, t in totals.items()}
        rows.append((c, rate, {name: t[0] / max(t[2], 1) for name, t in totals.items()}))
    print(f"\n{args.dataset}, {n} prompts a concurrency, {args.max_tokens} tokens, {args.dtype}; corpus: the "
          f"prompts' earlier answers ({corpus})")  # noqa: T201
    print("| c | off tok/s | on tok/s | on+corpus tok/s | on / off | on+corpus / off | tokens a step (on, +corpus) |")  # noqa: T201
    print("|---|---|---|---|---|---|---|")  # noqa: T201
    for c, rate, per_step in rows:
        print(f"| {c} | {rate['off']:.1f} | {rate['on']:.1f} | {rate['on+corpus']:.1f} | "  # noqa: T201
              f"{rate['on'] / rate['off']:.2f}x | {rate['on+corpus'] / rate['off']:.2f}x | "
              f"{per_step['on']:.2f}, {per_step['on+corpus']:.2f} |")


if __name__ == "__main__":
    main()
