"""Compile Grove's row-invariant Triton kernels for a GPU without one (Triton ships ptxas), and say
which matrix instruction each uses. Not a test itself; tests/kernels/test_aot_compile.py runs it.

    python -m kernels.aot_check [--arch 90]

The interpreter runs the kernels' arithmetic on a CPU but never compiles them, so an error only the
compiler raises (a tl.dot shape, a type) would first show on a lent GPU. And the instruction tells
something the interpreter cannot: on Hopper a tile of 64 rows runs on ``wgmma`` and one of 16 or
32 on ``mma.sync``, which may round differently, so every row-invariant call uses one tile shape.
Must run without ``TRITON_INTERPRET`` (the JIT then builds interpreted functions, which do not compile).
"""
from __future__ import annotations

import argparse
import inspect
import logging
from typing import Any

import triton
from triton.backends.compiler import GPUTarget

from kernels.invariant_matmul import BLOCK_K, BLOCK_M, BLOCK_N, NUM_WARPS, _matmul_kernel
from kernels.invariant_rms_norm import NUM_WARPS as NORM_WARPS
from kernels.invariant_rms_norm import _rms_norm_kernel
from kernels.paged_attention import _INVARIANT_BLOCK_M, _INVARIANT_BLOCK_N, _INVARIANT_WARPS, _paged_decode_kernel

logger = logging.getLogger(__name__)

# pointer arguments by name; other non-constexpr arguments are i32 except the fp32 scalars
_POINTERS = {"part_out_ptr": "*fp32", "part_lse_ptr": "*fp32", "seq_ids_ptr": "*i32", "query_start_ptr": "*i64",
             "num_cached_ptr": "*i64", "table_ptr": "*i64", "mask_ptr": "*i1", "path_ptr": "*i32",
             "depth_ptr": "*i32"}
_FLOATS = {"qk_scale", "eps"}


def _signature(fn: Any, constexprs: dict[str, Any], dtype: str) -> dict[str, str]:
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = _POINTERS.get(name, f"*{dtype}")
        else:
            sig[name] = "fp32" if name in _FLOATS else "i32"
    return sig


def compile_kernel(fn: Any, constexprs: dict[str, Any], num_warps: int, arch: int, dtype: str = "bf16") -> str:
    """Compiles ``fn`` for CUDA ``arch`` (e.g. 90) and returns its PTX."""
    src = triton.compiler.ASTSource(fn=fn, signature=_signature(fn, constexprs, dtype), constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps}).asm["ptx"]


def matrix_instruction(ptx: str) -> str:
    return "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "none"


def check(arch: int) -> dict[str, str]:
    """The row-invariant kernels as the engine launches them in bf16 (SmolLM2's attention shape:
    3 query heads per KV head, head_dim 64): kernel -> matrix instruction."""
    attention = dict(GROUP=3, G_PAD=4, HEAD_DIM=64, PAGE_SIZE=16, BLOCK_M=_INVARIANT_BLOCK_M,
                     BLOCK_N=_INVARIANT_BLOCK_N, UPCAST=False, DOT_PRECISION="tf32", HAS_TREE=False, TOKENS=1,
                     PATHS=True)
    kernels = {
        "matmul": (_matmul_kernel, dict(HAS_RESIDUAL=True, UPCAST=False, DOT_PRECISION="tf32", BLOCK_M=BLOCK_M,
                                         BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K), NUM_WARPS),
        "rms_norm": (_rms_norm_kernel, dict(HIDDEN=576, BLOCK=1024), NORM_WARPS),
        "decode": (_paged_decode_kernel, dict(attention, SPLIT=False), _INVARIANT_WARPS),
        "decode+split": (_paged_decode_kernel, dict(attention, SPLIT=True), _INVARIANT_WARPS),
    }
    return {name: matrix_instruction(compile_kernel(fn, consts, warps, arch)) for name, (fn, consts, warps)
            in kernels.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: Hopper)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, instruction in check(args.arch).items():
        logger.info("%s: %s", name, instruction)


if __name__ == "__main__":
    main()
