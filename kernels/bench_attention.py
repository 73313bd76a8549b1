"""Benchmark: decode (n=1) vs lookahead verify (n=8) attention on the paged cache, on a GPU.

    python -m kernels.bench_attention [--contexts 1024 8192 32768] [--batches 1 8 64] [--peak-gbps N] [--autotuned]

Llama-8B-like shapes (32 query heads, 8 KV heads, head_dim 128, bf16, 16-token blocks scattered at
random in the pool). For each (context, batch) it prints the Triton backend's time for n=1 and n=8
(a random tree), their ratio (goal <= 1.3x), the KV-read bandwidth as a fraction of the device's
peak (goal >= 70% at 8k+), and torch's scaled_dot_product_attention on the same data laid out
contiguously, as a reference speed. Without CUDA it says so and exits 0. The kernel runs as the
engine runs it, in its row-invariant configuration; ``--autotuned`` times the autotuned one with
batch-chosen KV splits instead (what the 2026-11-22 H100 table measured), so the two give the cost
of row invariance.

Times are GPU times of the launches replayed from a CUDA graph (``do_bench_cudagraph``), so a small
case measures the kernels, not Python's launch path; the "eager" columns time the same calls
launched from Python one by one (``do_bench``), which is what the engine pays today (no CUDA graphs).
"""
from __future__ import annotations

import argparse
import math
import random
import sys

import torch

HEADS, KV_HEADS, HEAD_DIM, PAGE = 32, 8, 128, 16
DTYPE = torch.bfloat16
# HBM peak in GB/s by device name (substring, most specific first); --peak-gbps overrides
_PEAK_GBPS = [("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100", 3350.0), ("A100-SXM4-80GB", 2039.0),
              ("A100", 1555.0), ("L40S", 864.0), ("A10G", 600.0), ("L4", 300.0)]


def peak_gbps(name: str) -> float | None:
    return next((gbps for key, gbps in _PEAK_GBPS if key in name), None)


def _case(batch: int, context: int, n: int, seed: int, row_invariant: bool):  # -> (backend, q, cache, plan, sdpa)
    from engine.attention.base import KVLayerCache
    from engine.batch import SeqInput, plan_batch
    from kernels.backend import TritonAttentionBackend

    rng = random.Random(seed)
    per_seq = -(-(context + n) // PAGE)
    blocks = list(range(batch * per_seq))
    rng.shuffle(blocks)
    seqs = [SeqInput(token_ids=[0] * n, num_cached=context, block_table=blocks[b * per_seq:(b + 1) * per_seq],
                     parents=None if n == 1 else [rng.randrange(-1, i) for i in range(n)])
            for b in range(batch)]
    meta = plan_batch(seqs, PAGE, device="cuda").attn
    pool = torch.randn(batch * per_seq, 1, 2, PAGE, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    cache = KVLayerCache(pool[:, 0, 0], pool[:, 0, 1])
    q = torch.randn(batch * n, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    backend = TritonAttentionBackend(row_invariant=row_invariant)
    plan = backend.plan(meta)

    # the same K/V, contiguous: [B, KVH, L, D]; queries [B, H, n, D]
    L = context + n
    pos = torch.arange(L, device="cuda")
    table = meta.block_tables[:, pos // PAGE]  # [B, L]
    k = cache.k[table, pos % PAGE].transpose(1, 2).contiguous()
    v = cache.v[table, pos % PAGE].transpose(1, 2).contiguous()
    qc = q.view(batch, n, HEADS, HEAD_DIM).transpose(1, 2).contiguous()
    mask = None
    if n > 1:  # every query sees the context and its tree ancestors
        tree = meta.tree_mask.view(batch, n, -1)[:, :, :n]
        mask = torch.cat([torch.ones(batch, n, context, dtype=torch.bool, device="cuda"), tree], dim=2)[:, None]

    def sdpa() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(qc, k, v, attn_mask=mask, enable_gqa=True)

    return backend, q, cache, plan, sdpa


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--peak-gbps", type=float, default=None, help="device HBM peak (default: by device name)")
    ap.add_argument("--autotuned", action="store_true",
                    help="the autotuned kernel with batch-chosen splits, not the engine's row-invariant one")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA: no GPU here, nothing to benchmark")
        return 0
    import triton.testing

    name = torch.cuda.get_device_name()
    peak = args.peak_gbps or peak_gbps(name)
    scale = 1 / math.sqrt(HEAD_DIM)
    print(f"{name}; peak {peak or '?'} GB/s; {HEADS} heads, {KV_HEADS} KV heads, head_dim {HEAD_DIM}, "
          f"{str(DTYPE).removeprefix('torch.')}, block {PAGE}")
    print(f"{'context':>8} {'batch':>5} | {'n=1 ms':>8} {'n=8 ms':>8} {'n8/n1':>6} | {'bw n=1':>7} {'bw n=8':>7} | "
          f"{'eager n=1':>9} {'eager n=8':>9} | {'sdpa n=1':>8} {'sdpa n=8':>8}")
    for context in args.contexts:
        for batch in args.batches:
            row: dict[str, float] = {}
            for n in (1, 8):
                backend, q, cache, plan, sdpa = _case(batch, context, n, seed=context + batch, row_invariant=not args.autotuned)
                backend.attend(q, cache, plan, scale)  # compile (and autotune) outside the timing and the graph
                torch.cuda.synchronize()
                row[f"t{n}"] = triton.testing.do_bench_cudagraph(lambda: backend.attend(q, cache, plan, scale))
                row[f"e{n}"] = triton.testing.do_bench(lambda: backend.attend(q, cache, plan, scale))
                row[f"s{n}"] = triton.testing.do_bench_cudagraph(sdpa)
                kv_bytes = batch * (context + n) * KV_HEADS * HEAD_DIM * 2 * DTYPE.itemsize  # K and V
                row[f"bw{n}"] = kv_bytes / (row[f"t{n}"] * 1e-3) / 1e9 / peak if peak else float("nan")
                del q, cache, plan, sdpa
                torch.cuda.empty_cache()
            print(f"{context:>8} {batch:>5} | {row['t1']:>8.3f} {row['t8']:>8.3f} {row['t8'] / row['t1']:>5.2f}x | "
                  f"{row['bw1']:>6.0%} {row['bw8']:>7.0%} | {row['e1']:>9.3f} {row['e8']:>9.3f} | "
                  f"{row['s1']:>8.3f} {row['s8']:>8.3f}")
    print("goals: n8/n1 <= 1.3x; bandwidth >= 70% of peak at 8k+ contexts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
