"""Paged attention on the CPU (``cpu_attention.cpp``): built once with the system C++ compiler,
called through ctypes on the tensors' memory.

    cpu_paged_attention(q, k_cache, v_cache, block_tables, query_start, num_cached, scale, tree_mask,
                        positions, sliding_window)
    PagedQuery.build(...) once per step, then run(q, k_cache, v_cache, paged_query, scale) per layer

Semantics are ``kernels.paged_attention.paged_attention_ref``'s (decode, lookahead trees and
causal chunks; every query sees its sequence's cached keys, or with a sliding window W those at
positions > p - W). The kernel reads the pool through the
block tables in place, computes in fp32 for every cache dtype, and is row-invariant by
construction (see the .cpp): a query row gets the same bits whatever else is in the step, which is
what keeps 16-bit lookahead exact, and without the fp64 pass of the torch backend.

On CPUs with AMX, bf16 queries against a bf16 cache take the kernel's AMX path (``amx()``): the
scores and most of each row's weighted value sum on TDPBF16PS tiles with the weights in bf16, the
row's last ``AMX_TAIL`` keys one at a time, so lookahead trees up to that deep stay bit-exact.

The library is compiled for this machine (``-march=native``) into Grove's cache, keyed by the
source and the CPU's flags; without a compiler ``available()`` is False and the engine attends
with the torch backend. Threads: the kernel runs in the OpenMP pool torch already loaded, with
``torch.get_num_threads()`` threads of the calling thread, so no second pool competes for the cores.
"""
from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels import cpu_build

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".cpp")
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def library_path() -> Path:
    """Where the built library lives: one per source, compiler flags and CPU."""
    return cpu_build.library_path(SOURCE)


def build() -> Path:
    """Compiles the library if it is not built yet; raises RuntimeError with the compiler's output."""
    return cpu_build.build(SOURCE)


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = cpu_build.load(SOURCE, "attending with the torch backend")
    if lib is None:
        return None
    fn = lib.grove_paged_attention
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [p, p, p, ctypes.c_int32, ctypes.c_int32, i64, i64, i64, i64, i64, p, i64, p, p, i64, p, i64, p, i64,
                   ctypes.c_float, p, ctypes.c_int32, ctypes.c_int32]
    fn.restype = ctypes.c_int
    for name in ("grove_attention_bf16_dot", "grove_attention_amx", "grove_attention_amx_tail"):
        getattr(lib, name).argtypes = []
        getattr(lib, name).restype = ctypes.c_int
    return lib


def bf16_dot() -> bool:
    """True when the kernel scores bf16 queries against a bf16 cache with VDPBF16PS (two dims per
    multiply-add, products exact in fp32): then a bf16 q and the same q in fp32 get close results,
    not the same bits (an fp32 q takes the fp32 FMA chain)."""
    lib = _library()
    return lib is not None and bool(lib.grove_attention_bf16_dot())


def amx() -> bool:
    """True when bf16 queries against a bf16 cache (head_dim a multiple of 32) run on AMX tiles:
    P is rounded to bf16 for the tiled keys, so results are close to the other paths', not equal;
    a lookahead tree deeper than ``AMX_TAIL`` is refused (see the .cpp)."""
    lib = _library()
    return lib is not None and bool(lib.grove_attention_amx())


AMX_TAIL = 32  # cpu_attention.cpp: the keys this close before a row's position are summed one at a time


def available() -> bool:
    """True when the kernel is built (or builds now) and loads."""
    return _library() is not None


@dataclass(frozen=True, slots=True)
class PagedQuery:
    """A step's metadata, checked and laid out for the kernel once; every layer reuses it."""

    block_tables: torch.Tensor  # [B, max_blocks] int64, contiguous
    query_start: torch.Tensor  # [B + 1] int64
    num_cached: torch.Tensor  # [B] int64
    tree_mask: torch.Tensor | None  # [T, max_q] uint8, None: causal chains
    num_tokens: int
    positions: torch.Tensor | None = None  # [T] int64, with a window: each query token's position
    window: int = 0  # sliding window; 0: none

    @classmethod
    def build(cls, block_tables: torch.Tensor, query_start: torch.Tensor, num_cached: torch.Tensor,
              tree_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
              sliding_window: int | None = None) -> "PagedQuery":
        """``positions`` (a tree token's by depth) is needed with ``sliding_window``; a query at
        position p then sees only keys at positions > p - sliding_window."""
        tensors = dict(block_tables=block_tables, query_start=query_start, num_cached=num_cached, tree_mask=tree_mask,
                       positions=positions)
        off_cpu = {n: t.device for n, t in tensors.items() if t is not None and t.device.type != "cpu"}
        if off_cpu:
            raise ValueError("the CPU attention kernel takes CPU tensors: " + ", ".join(f"{n} is on {d}" for n, d in off_cpu.items()))
        B = num_cached.shape[0]
        if query_start.shape != (B + 1,) or block_tables.dim() != 2 or block_tables.shape[0] != B:
            raise ValueError(f"query_start must be [B + 1] and block_tables [B, max_blocks] for B = {B}")
        if any(t.dtype != torch.long for t in (block_tables, query_start, num_cached)):
            raise ValueError("block_tables, query_start and num_cached must be int64")
        T = int(query_start[-1])
        if tree_mask is not None and (tree_mask.dim() != 2 or tree_mask.shape[0] != T):
            raise ValueError(f"tree_mask must be [T={T}, max_q], got {tuple(tree_mask.shape)}")
        mask = tree_mask.to(torch.uint8).contiguous() if tree_mask is not None else None
        if sliding_window is None:
            return cls(block_tables.contiguous(), query_start.contiguous(), num_cached.contiguous(), mask, T)
        if sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
        if positions is None or positions.shape != (T,) or positions.dtype != torch.long:
            raise ValueError(f"a sliding window needs positions: [T={T}] int64")
        return cls(block_tables.contiguous(), query_start.contiguous(), num_cached.contiguous(), mask, T,
                   positions.contiguous(), sliding_window)


def check_cache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """q: [T, H, D]; k/v: [num_blocks, block_size, KVH, D] views with contiguous blocks, equal strides."""
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError(f"q must be [T, H, D] and k/v caches [num_blocks, block_size, kv_heads, head_dim] views "
                         f"with equal strides, got {tuple(q.shape)}, {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    _, _, kvh, d = k_cache.shape
    if d != q.shape[2] or q.shape[1] % kvh:
        raise ValueError(f"q {tuple(q.shape)} does not fit {kvh} kv heads of dim {d}")
    if k_cache.stride()[1:] != (kvh * d, d, 1):
        raise ValueError(f"each cache block must be a contiguous [block_size, kv_heads, head_dim], strides {k_cache.stride()}")
    if k_cache.dtype not in _DTYPES or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"cache dtype {k_cache.dtype} not supported (float32, bfloat16, float16)")
    if q.dtype not in (torch.float32, k_cache.dtype):
        raise ValueError(f"q must be float32 or the cache's dtype {k_cache.dtype}, got {q.dtype}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.device.type != "cpu":
            raise ValueError(f"the CPU attention kernel takes CPU tensors: {name} is on {t.device}")


def run(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pq: PagedQuery, scale: float,
        use_amx: bool = True) -> torch.Tensor:
    """The kernel on checked inputs (``check_cache`` once per pool, ``PagedQuery.build`` once per
    step): [T, H, D] in q's dtype. The kernel reads q and writes the output in their own dtype
    (fp32 inside; the output rounded to nearest even, as ``.to()`` would). ``use_amx=False`` keeps
    a bf16 call off the AMX path: for side-by-side measurements, never in serving (every call of
    a process must take one path, or tree rows stop agreeing with plain decoding)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the CPU attention kernel is not available (see the log for why)")
    T, H, D = q.shape
    if T != pq.num_tokens:
        raise ValueError(f"q has {T} tokens, the step {pq.num_tokens}")
    _, bs, kvh, _ = k_cache.shape
    qc = q.contiguous()
    out = torch.empty(T, H, D, dtype=q.dtype)
    mask = pq.tree_mask
    rc = lib.grove_paged_attention(
        qc.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), _DTYPES[k_cache.dtype], int(q.dtype == torch.float32),
        k_cache.stride(0), bs, kvh,
        H // kvh, D, pq.block_tables.data_ptr(), pq.block_tables.shape[1], pq.query_start.data_ptr(),
        pq.num_cached.data_ptr(), pq.num_cached.shape[0], mask.data_ptr() if mask is not None else None,
        mask.shape[1] if mask is not None else 0, pq.positions.data_ptr() if pq.positions is not None else None,
        pq.window, scale, out.data_ptr(), max(1, torch.get_num_threads()), int(use_amx))
    if rc == 3:
        raise ValueError(f"a lookahead tree deeper than {AMX_TAIL} tokens: the AMX path would lose exactness")
    if rc != 0:
        raise RuntimeError(f"grove_paged_attention returned {rc}")
    return out


def cpu_paged_attention(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]: strided views of the pool are fine
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int64
    query_start: torch.Tensor,  # [B + 1] int64
    num_cached: torch.Tensor,  # [B] int64
    scale: float,
    tree_mask: torch.Tensor | None = None,  # [T, max_q] bool; None: causal chains
    positions: torch.Tensor | None = None,  # [T] int64, needed with a sliding window
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Attention of the step's query tokens over their sequences' paged K/V: [T, H, D] in q's dtype."""
    check_cache(q, k_cache, v_cache)
    pq = PagedQuery.build(block_tables, query_start, num_cached, tree_mask, positions, sliding_window)
    return run(q, k_cache, v_cache, pq, scale)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ok = available()
    logger.info("CPU attention kernel: %s", library_path() if ok else "not built")
    raise SystemExit(0 if ok else 1)
