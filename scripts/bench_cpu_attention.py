"""The CPU attention kernel's AMX path against its VDPBF16PS path on this CPU (not a test).

    PYTHONPATH=. .venv/bin/python scripts/bench_cpu_attention.py [--reps 15]

SmolLM2-135M's attention shapes (9 query heads, 3 KV heads, head_dim 64, bf16, 16-token blocks
scattered in the pool), one layer's call at a time over 30 layers' pools (more than the L3 holds,
as in decoding): plain decodes (one query token a sequence) and lookahead trees (random trees of
8 or 14 nodes), 1 or 16 sequences behind 600-1,500 tokens. The two paths alternate pass by pass in
this process; medians in ms per layer, and the ratio. Without AMX on this CPU it says so and exits.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

import torch

from kernels import cpu_attention
from kernels.cpu_attention import PagedQuery
from tests.kernels.paged_data import make_paged_batch

logger = logging.getLogger("bench_cpu_attention")
LAYERS = 30
CASES = {  # name: (num_cached, num_new, is_tree) per sequence
    "16 decodes behind 600": [(600, 1, False)] * 16,
    "16 trees of 8 behind 600": [(600, 8, True)] * 16,
    "16 trees of 14 behind 600": [(600, 14, True)] * 16,
    "16 decodes behind 1,500": [(1500, 1, False)] * 16,
    "1 decode behind 900": [(900, 1, False)],
    "1 tree of 14 behind 900": [(900, 14, True)],
}


def case_inputs(seqs: list[tuple[int, int, bool]], dtype: torch.dtype = torch.bfloat16
                ) -> tuple[torch.Tensor, PagedQuery, list[tuple[torch.Tensor, torch.Tensor]]]:
    """q, the paged query and the 30 layers' (k, v) pools of one case (SmolLM2's heads, in ``dtype``)."""
    pb = make_paged_batch(seqs, page=16, kv_heads=3, group=3, head_dim=64, dtype=dtype, seed=1,
                          num_layers=LAYERS)
    m = pb.meta
    pq = PagedQuery.build(m.block_tables, m.query_start, m.num_cached, m.tree_mask)
    return pb.q, pq, [(pb.pool[:, layer, 0], pb.pool[:, layer, 1]) for layer in range(LAYERS)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15, help="passes over the 30 layers per path")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not cpu_attention.amx():
        logger.info("no AMX path on this CPU (or the kernel did not build): nothing to compare")
        return 0
    logger.info(f"{'case':<28} {'VDPBF16PS ms':>12} {'AMX ms':>8} {'AMX / VDPBF16PS':>16}")
    for name, seqs in CASES.items():
        q, pq, layers = case_inputs(seqs)
        times: dict[bool, list[float]] = {True: [], False: []}
        for rep in range(args.reps + 1):
            for amx in (True, False):
                t0 = time.perf_counter()
                for k, v in layers:
                    cpu_attention.run(q, k, v, pq, 0.125, use_amx=amx)
                if rep:  # the first pass warms up
                    times[amx].append((time.perf_counter() - t0) / LAYERS * 1e3)
        plain, amx = statistics.median(times[False]), statistics.median(times[True])
        logger.info(f"{name:<28} {plain:>12.3f} {amx:>8.3f} {amx / plain:>15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
