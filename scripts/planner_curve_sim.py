"""Tokens a sequence-step the lookahead planner reaches under another machine's step costs (a
simulation on this machine, not a speed figure).

    .venv/bin/python scripts/planner_curve_sim.py --dataset code-edit --concurrency 16 \
        --curve "1:10.4,2:11.9,4:11.3,8:11.8,16:12.7,32:12.1,64:13.3" --curve "...,128:14,256:16"

Drafts are sized by the step cost model (engine.lookahead.budget). Where steps cost what a GPU's
do (launch-bound: nearly the same at 1 or 256 tokens) the planner drafts more than where they grow
with width. The outputs and acceptance are the model's whatever the device, so this machine can
show what a curve makes the planner do: each ``--curve`` (milliseconds by query tokens, fixed: no
online updates) runs the same prompts on a fresh engine (the global cache would otherwise hold the
first run's answers) and prints tokens per sequence-step. Session 26 used it with an H200's
calibrated fp32 curve, to 64 tokens as calibrated then and extended flat to 256.
"""
from __future__ import annotations

import argparse
import logging

from bench.datasets import load_prompts
from bench.inprocess import decode_batch
from bench.jobs import prompt_token_ids
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.lookahead.budget import StepCostModel
from engine.sampling_params import SamplingParams

logger = logging.getLogger("planner_curve_sim")


class FixedCurve(StepCostModel):
    """A cost model with given points that learns nothing from this machine's steps."""

    def __init__(self, ms_by_tokens: dict[int, float]) -> None:
        super().__init__()
        for tokens, ms in ms_by_tokens.items():
            self.points[1 << max(0, (tokens - 1).bit_length())] = (float(tokens), ms / 1e3)
        self.invalidate()

    def observe(self, tokens: int, seconds: float, key_reads: int = 0, context_keys: int = 0) -> None:
        pass

    def observe_step(self, drafted: bool, seconds: float, price: float, relax: float = 0.98) -> None:
        pass


def parse_curve(text: str) -> dict[int, float]:
    """"1:10.4,2:11.9" -> {1: 10.4, 2: 11.9}"""
    return {int(n): float(ms) for n, ms in (item.split(":") for item in text.split(","))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="code-edit")
    ap.add_argument("--skip-prompts", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16, help="prompts decoded together (one batch)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--curve", action="append", required=True, help="ms by query tokens: 1:10.4,2:11.9,...")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    records = load_prompts(args.dataset)[args.skip_prompts:args.skip_prompts + args.concurrency]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    for curve in args.curve:
        engine = LLMEngine(EngineConfig(dtype=args.dtype, lookahead=True, num_kv_blocks=4096, max_num_seqs=256,
                                        max_num_batched_tokens=2048))
        engine.speculator.cost = FixedCurve(parse_curve(curve))  # type: ignore[union-attr]
        prompts = [prompt_token_ids(engine.tokenizer, p) for p in records]
        done = decode_batch(engine, prompts, params, "sim")
        print(f"{args.dataset} c={args.concurrency} curve {curve}: {done.tokens / done.seq_steps:.2f} tokens a "
              f"sequence-step", flush=True)


if __name__ == "__main__":
    main()
