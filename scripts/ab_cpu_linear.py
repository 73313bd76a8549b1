"""Two builds of the CPU product kernel alternating in one process (not a test).

    .venv/bin/python scripts/ab_cpu_linear.py OLD.cpp NEW.cpp [--tokens 1,8,14,16,28,48,64] [--reps 13] [--fp32]

For a change to kernels/cpu_linear.cpp (kernels/cpu_linear_fp32.cpp with --fp32): copy the old
source aside (with the kernels' headers, cpu_*.h, beside it), edit, and run this with both. A shared
2-core machine's speed drifts by 10-40% within minutes, so two runs of scripts/bench_cpu_linear.py
minutes apart cannot tell a 10% change; here the builds alternate pass by pass over SmolLM2's four
products in 30 distinct layers of random bf16 weights (212 MB, more than the L3 holds, as in
decoding), on the path this CPU takes (AMX where it has it, else VDPBF16PS). Reported: medians in ms
per pass over the 30 layers, NEW / OLD, and whether the two builds' outputs are bit-equal (a
prefetching or scheduling change must keep them so).

--fp32: the fp32 kernel's builds instead, over the same products in fp32 and the lm_head (540 MB, as
a fp32 decode step reads them).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench_cpu_linear import LAYERS, LM_HEAD, SHAPES  # this directory (run as a script)
from kernels import cpu_build, cpu_linear, cpu_linear_fp32

logger = logging.getLogger("ab_cpu_linear")


def alternate(one_pass: Callable[[int], None], reps: int) -> tuple[float, float]:
    """Median ms of ``one_pass(0)`` (the old build) and ``one_pass(1)`` (the new), taken in turn
    ``reps`` times after a warm-up pass of each."""
    times: list[list[float]] = [[], []]
    for rep in range(reps + 1):
        for which in (0, 1):
            t0 = time.perf_counter()
            one_pass(which)
            if rep:  # the first pass warms up
                times[which].append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--tokens", default="1,8,14,16,28,48,64")
    ap.add_argument("--reps", type=int, default=13, help="passes over the 30 layers per build")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fp32", action="store_true", help="kernels/cpu_linear_fp32.cpp's builds")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.fp32:
        return fp32(args)
    if not cpu_linear.available():
        raise SystemExit("the CPU linear kernel is not available on this machine (no AVX2 or no compiler)")
    libs = [cpu_build.load_aside(cpu_linear, args.old), cpu_build.load_aside(cpu_linear, args.new)]
    gen = torch.Generator().manual_seed(0)
    layers = [[cpu_linear.pack(torch.randn(o, i, generator=gen).bfloat16()) for o, i in SHAPES] for _ in range(LAYERS)]
    path = "AMX" if layers[0][0].amx else cpu_linear.vector_path()
    logger.info(f"SmolLM2's products over {LAYERS} distinct layers, {path}, {args.threads} threads, ms a pass")
    logger.info(f"{'tokens':>6} {'old':>8} {'new':>8} {'new/old':>8}  same bits")
    for T in (int(t) for t in args.tokens.split(",")):
        xs = [torch.randn(T, i, generator=gen).bfloat16() for _, i in SHAPES]
        outs = [[torch.empty(T, o, dtype=torch.bfloat16) for o, _ in SHAPES] for _ in libs]

        def one_pass(which: int) -> None:
            lib = libs[which]
            for layer in layers:
                for x, w, y in zip(xs, layer, outs[which]):
                    call = lib.grove_linear_amx if w.amx else lib.grove_linear_bf16
                    rc = call(x.data_ptr(), T, w.in_features, w.in_features, w.ptr, w.out_features, y.data_ptr(),
                              w.out_features, 0, None, 0.0, args.threads)
                    if rc != 0:
                        raise SystemExit(f"{[args.old, args.new][which]} returned {rc}")

        old, new = alternate(one_pass, args.reps)
        same = all(torch.equal(a.view(torch.int16), b.view(torch.int16)) for a, b in zip(*outs))
        logger.info(f"{T:>6} {old:>8.2f} {new:>8.2f} {new / old:>7.2f}x  {same}")
    return 0


def fp32(args: argparse.Namespace) -> int:
    if not cpu_linear_fp32.available():
        raise SystemExit("the fp32 linear kernel is not available on this machine (no AVX2 with FMA or no compiler)")
    libs = [cpu_build.load_aside(cpu_linear_fp32, args.old), cpu_build.load_aside(cpu_linear_fp32, args.new)]
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=gen) for _ in range(LAYERS) for o, i in SHAPES]
    weights.append(torch.randn(*LM_HEAD, generator=gen))
    logger.info(f"SmolLM2's fp32 products over {LAYERS} distinct layers and the lm_head, {args.threads} threads, ms a pass")
    logger.info(f"{'tokens':>6} {'old':>8} {'new':>8} {'new/old':>8}  same bits")
    for T in (int(t) for t in args.tokens.split(",")):
        xs = {i: torch.randn(T, i, generator=gen) for i in {w.shape[1] for w in weights}}
        outs = [[torch.empty(T, w.shape[0]) for w in weights] for _ in libs]

        def one_pass(which: int) -> None:
            for w, y in zip(weights, outs[which]):
                x = xs[w.shape[1]]
                rc = libs[which].grove_linear_fp32(x.data_ptr(), T, w.shape[1], w.shape[1], w.data_ptr(), w.shape[0],
                                                   y.data_ptr(), w.shape[0], 0, None, 0.0, args.threads)
                if rc != 0:
                    raise SystemExit(f"{[args.old, args.new][which]} returned {rc}")

        old, new = alternate(one_pass, args.reps)
        same = all(torch.equal(a, b) for a, b in zip(*outs))
        logger.info(f"{T:>6} {old:>8.2f} {new:>8.2f} {new / old:>7.2f}x  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
