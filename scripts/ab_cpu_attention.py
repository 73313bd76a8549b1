"""Two builds of the CPU attention kernel alternating in one process (not a test).

    PYTHONPATH=. .venv/bin/python scripts/ab_cpu_attention.py OLD.cpp NEW.cpp [--reps 9] [--dtype float32]

For a change to kernels/cpu_attention.cpp: copy the old source aside (with the kernels' headers, cpu_*.h, beside it),
edit, and run this with both. A shared 2-core machine's speed drifts by 10-40% within minutes, so
two runs of scripts/bench_cpu_attention.py minutes apart cannot tell a 10% change; here the builds
alternate pass by pass over 30 layers' pools (SmolLM2's heads, bf16 unless --dtype says otherwise,
16-token blocks scattered in the pool), on each path the CPU has for the dtype (bf16: VDPBF16PS, and
AMX where present). Reported: medians in ms per layer, NEW / OLD, and whether the two builds'
outputs are bit-equal (a scheduling or prefetching change must keep them so).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from bench_cpu_attention import CASES as PATH_CASES, LAYERS, case_inputs  # this directory (run as a script)
from kernels import cpu_attention, cpu_build

logger = logging.getLogger("ab_cpu_attention")
CASES = {  # the path comparison's cases, and two more: (num_cached, num_new, is_tree) per sequence
    **PATH_CASES,
    "4 decodes behind 600": [(600, 1, False)] * 4,
    "1 prefill of 1,024": [(0, 1024, False)],
    "16 mixed (300-1,500, trees 1-10)": [(300 + 80 * i, 1 + (i * 7) % 10, True) for i in range(16)],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--reps", type=int, default=9, help="passes over the 30 layers per build and path")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="q, cache and output dtype")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    libs = [cpu_build.load_aside(cpu_attention, args.old), cpu_build.load_aside(cpu_attention, args.new)]
    dtype = getattr(torch, args.dtype)
    paths = [False, True] if cpu_attention.amx() and dtype == torch.bfloat16 else [False]
    plain = "vdp" if dtype == torch.bfloat16 else args.dtype  # the path without AMX
    original = cpu_attention._library
    logger.info(f"{'case':<34} {'path':>7} {'old ms':>8} {'new ms':>8} {'new/old':>8}  same bits")
    try:
        for name, seqs in CASES.items():
            q, pq, layers = case_inputs(seqs, dtype)
            for amx in paths:
                times: list[list[float]] = [[], []]
                outs: list[torch.Tensor] = []
                for rep in range(args.reps + 1):
                    for which, lib in enumerate(libs):
                        cpu_attention._library = lambda lib=lib: lib  # type: ignore[assignment]
                        t0 = time.perf_counter()
                        for k, v in layers:
                            out = cpu_attention.run(q, k, v, pq, 0.125, use_amx=amx)
                        if rep:  # the first pass warms up
                            times[which].append((time.perf_counter() - t0) / LAYERS * 1e3)
                        else:
                            outs.append(out)
                old, new = statistics.median(times[0]), statistics.median(times[1])
                same = torch.equal(outs[0].view(torch.uint8), outs[1].view(torch.uint8))  # bits (NaN too)
                logger.info(f"{name:<34} {'amx' if amx else plain:>7} {old:>8.3f} {new:>8.3f} {new / old:>7.2f}x  {same}")
    finally:
        cpu_attention._library = original
    return 0


if __name__ == "__main__":
    sys.exit(main())
