"""Decoding with LoRA adapters against the base model, side by side in one engine (not a test).

    .venv/bin/python scripts/bench_lora.py [--dtype float32|bfloat16] [--concurrency 1,8]
                                           [--adapters 4] [--rank 8] [--max-tokens 64]

At each concurrency c, c requests of one prompt decode --max-tokens tokens (greedy, ignore_eos,
lookahead off: the products alone are compared) as: the base model; all with one adapter; spread
over --adapters adapters (round robin; the scheduler's --max-loras is set to let them all run). The
base model runs first and last; its tokens/s is the mean of the two. Decoding tokens/s counts the
tokens after the first (the prefill's) over the decoding steps' time.

The adapters are random (rank --rank on every projection), written in PEFT's format.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.config import ModelConfig
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.lora.adapter import MODULE_PARENT, adapter_digest
from engine.paths import default_model_dir
from engine.request import LoraRef
from engine.sampling_params import SamplingParams

logger = logging.getLogger("bench_lora")


def write_adapter(folder: Path, config: ModelConfig, rank: int, seed: int) -> Path:
    """A random PEFT LoRA adapter of ``rank`` on every attention and MLP projection."""
    gen = torch.Generator().manual_seed(seed)
    outs = {"q_proj": config.q_size, "k_proj": config.kv_size, "v_proj": config.kv_size, "o_proj": config.hidden_size,
            "gate_proj": config.intermediate_size, "up_proj": config.intermediate_size, "down_proj": config.hidden_size}
    ins = {"o_proj": config.q_size, "down_proj": config.intermediate_size}
    tensors = {}
    for layer in range(config.num_layers):
        for module, parent in MODULE_PARENT.items():
            key = f"base_model.model.model.layers.{layer}.{parent}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, ins.get(module, config.hidden_size), generator=gen) * 0.02
            tensors[f"{key}.lora_B.weight"] = torch.randn(outs[module], rank, generator=gen) * 0.02
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(MODULE_PARENT), "bias": "none"}))
    return folder


def decode_rate(engine: LLMEngine, prompt: list[int], loras: list[LoraRef | None], max_tokens: int) -> float:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    seqs = []
    for i, lora in enumerate(loras):
        seq = engine.make_sequence(f"bench-{time.monotonic_ns()}-{i}", prompt, params, lora=lora)
        engine.add_sequence(seq)
        seqs.append(seq)
    while any(not s.output_ids for s in seqs):  # the prompts, to their first tokens
        engine.step()
    t0 = time.perf_counter()
    while engine.has_work:
        engine.step()
    return sum(len(s.output_ids) - 1 for s in seqs) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model_dir = default_model_dir()
    config = ModelConfig.from_dir(model_dir)
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype=args.dtype, lookahead=False, num_threads=args.threads,
                                    max_loras=args.adapters, max_lora_rank=args.rank))
    prompt = engine.tokenizer("Once upon a time, in a land far away, there lived")["input_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        refs = [LoraRef(f"a{i}", str(path), adapter_digest(path)) for i, path in
                enumerate(write_adapter(Path(tmp) / f"a{i}", config, args.rank, seed=i) for i in range(args.adapters))]
        print(f"{args.dtype}, rank {args.rank}, {args.max_tokens} tokens per request (decoding tokens/s)")  # noqa: T201
        print(f"{'c':>3} {'base':>8} {'1 adapter':>14} {f'{args.adapters} adapters':>14}")  # noqa: T201
        for c in (int(x) for x in args.concurrency.split(",")):
            first = decode_rate(engine, prompt, [None] * c, args.max_tokens)
            one = decode_rate(engine, prompt, [refs[0]] * c, args.max_tokens)
            many = decode_rate(engine, prompt, [refs[i % len(refs)] for i in range(c)], args.max_tokens)
            base = (first + decode_rate(engine, prompt, [None] * c, args.max_tokens)) / 2
            print(f"{c:>3} {base:>8.1f} {one:>8.1f} {one / base:>4.2f}x {many:>8.1f} {many / base:>4.2f}x")  # noqa: T201


if __name__ == "__main__":
    main()
