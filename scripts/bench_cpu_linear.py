"""The bf16 product kernel's two paths side by side on this CPU (not a test).

    .venv/bin/python scripts/bench_cpu_linear.py [--tokens 1,2,8,16,32,64,128] [--model] [--fp32]

Products alone: SmolLM2-135M's four per-layer products (qkv, o, gate_up, down) over 30 distinct
layers of random bf16 weights (212 MB, more than the L3 holds, as in decoding), through the AMX
path, the VDPBF16PS path and torch's ``W @ X``, at each token count; median of 7 passes each.

--model: the whole model in two engines that differ only in the path their weights were packed
for, one step of 1 or 16 sequences behind 300 tokens with 1-16 query tokens each (a tree's
chain), the engines alternating, median of 6. Without AMX on this CPU only the vector path and torch run.

--fp32: the fp32 products instead (the same shapes and the lm_head, 540 MB), by torch's ``F.linear``,
torch's ``W @ X`` (engine.fp32_products.product) and Grove's fp32 kernel (kernels.cpu_linear_fp32):
the three layouts engine.fp32_products times at start and chooses between.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import torch

from engine import fp32_products
from kernels import cpu_linear, cpu_linear_fp32

SHAPES = [(576 + 2 * 192, 576), (576, 576), (2 * 1536, 576), (576, 1536)]  # SmolLM2: qkv, o, gate_up, down
LM_HEAD = (49152, 576)
LAYERS = 30


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def products(tokens: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    weights = [[torch.randn(o, i, generator=gen).bfloat16() for o, i in SHAPES] for _ in range(LAYERS)]
    paths: dict[str, list[list[cpu_linear.PackedLinear]]] = {}
    if cpu_linear.amx_available():
        paths["AMX"] = [[cpu_linear.pack(w, amx=True) for w in layer] for layer in weights]
    paths[cpu_linear.vector_path()] = [[cpu_linear.pack(w, amx=False) for w in layer] for layer in weights]
    print(f"SmolLM2's products over {LAYERS} distinct layers, bf16, {torch.get_num_threads()} threads, ms")  # noqa: T201
    print(f"{'tokens':>6} " + " ".join(f"{name:>10}" for name in paths) + f" {'torch W@X':>10}")  # noqa: T201
    for T in tokens:
        xs = [torch.randn(T, i, generator=gen).bfloat16() for _, i in SHAPES]
        row = [_median_ms(lambda p=packed: [cpu_linear.linear(x, w) for layer in p for x, w in zip(xs, layer)], 7)
               for packed in paths.values()]
        row.append(_median_ms(lambda: [torch.mm(w, x.t()) for layer in weights for x, w in zip(xs, layer)], 7))
        print(f"{T:>6} " + " ".join(f"{ms:>10.2f}" for ms in row))  # noqa: T201


def fp32(tokens: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=gen) for _ in range(LAYERS) for o, i in SHAPES] + [torch.randn(*LM_HEAD, generator=gen)]
    layouts: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "F.linear": lambda x, w: torch.nn.functional.linear(x, w),
        "W@X": lambda x, w: fp32_products.product(w, x),
    }
    if cpu_linear_fp32.available():
        layouts["kernel"] = cpu_linear_fp32.linear
    print(f"SmolLM2's products over {LAYERS} distinct layers and the lm_head, fp32, {torch.get_num_threads()} threads, ms")  # noqa: T201
    print(f"{'tokens':>6} " + " ".join(f"{name:>10}" for name in layouts))  # noqa: T201
    for T in tokens:
        xs = {i: torch.randn(T, i, generator=gen) for i in {w.shape[1] for w in weights}}
        row = [_median_ms(lambda f=f: [f(xs[w.shape[1]], w) for w in weights], 5) for f in layouts.values()]
        print(f"{T:>6} " + " ".join(f"{ms:>10.2f}" for ms in row))  # noqa: T201


def model_steps() -> None:
    from engine.batch import SeqInput, plan_batch
    from engine.engine_config import EngineConfig
    from engine.llm_engine import LLMEngine

    if not cpu_linear.amx_available():
        print("this CPU has no AMX: one path only, nothing to compare")  # noqa: T201
        return
    engines = {}
    for amx in (True, False):
        engine = LLMEngine(EngineConfig(dtype="bfloat16", num_kv_blocks=1200, lookahead=False))
        if not amx:  # the same weights, packed for the other path
            for layer in engine.model.weights.layers:
                for name in ("qkv", "o", "gate_up", "down"):
                    setattr(layer, name, cpu_linear.pack(getattr(layer, name).unpack().contiguous(), amx=False))
            w = engine.model.weights
            w.lm_head = cpu_linear.pack(w.lm_head.unpack().contiguous(), amx=False)
        engines[amx] = engine
    bs, ctx = engines[True].config.block_size, 300

    def step(engine: LLMEngine, blocks: list[list[int]], n: int) -> float:
        ids = list(range(100, 100 + n))
        inputs = [SeqInput(ids, ctx, b, parents=[-1, *range(n - 1)] if n > 1 else None, logits="all") for b in blocks]
        plan = plan_batch(inputs, bs, "cpu")
        t0 = time.perf_counter()
        engine.model.run(plan, engine.kv)
        return time.perf_counter() - t0

    print(f"{'step':>34} {'AMX ms':>8} {'VDPBF16PS ms':>13} {'ratio':>6}")  # noqa: T201
    for nseq in (1, 16):
        blocks = {a: [e.allocator.allocate(-(-(ctx + 16) // bs)) for _ in range(nseq)] for a, e in engines.items()}
        for n in (1, 4, 8, 16):
            times: dict[bool, list[float]] = {True: [], False: []}
            for r in range(7):
                for amx in (True, False) if r % 2 == 0 else (False, True):
                    times[amx].append(step(engines[amx], blocks[amx], n))
            med = {a: statistics.median(t[1:]) * 1e3 for a, t in times.items()}  # the first: warm-up
            print(f"{f'{nseq} seqs x {n} tokens behind {ctx}':>34} {med[True]:>8.1f} {med[False]:>13.1f} "  # noqa: T201
                  f"{med[False] / med[True]:>5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1,2,8,16,32,64,128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", action="store_true", help="also the whole model's steps on both paths")
    parser.add_argument("--fp32", action="store_true", help="the fp32 products' three layouts instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.fp32:
        fp32([int(t) for t in args.tokens.split(",")])
        return
    if not cpu_linear.available():
        raise SystemExit("the CPU linear kernel is not available on this machine (no AVX2 or no compiler)")
    products([int(t) for t in args.tokens.split(",")])
    if args.model:
        model_steps()


if __name__ == "__main__":
    main()
