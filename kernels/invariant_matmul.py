"""Row-invariant products on a GPU: ``x @ w.T`` (optionally added into a residual) whose every row
has the same bits whatever else the step holds.

cuBLAS picks its kernel (tile shape, split-K) by the problem's shape, so a token's projection
rounds differently in a 9-token lookahead step than alone: on an H200 the bundled model's bf16
greedy output changed with lookahead on. Here one fixed tile configuration serves every row count
and K is walked in one order, in fp32, by every program, so a row's result depends on its own
inputs alone (the approach of "batch-invariant" kernels: Thinking Machines, vLLM). The cost is
cuBLAS's tuning: no split-K for few rows, one tile shape for all.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch import check_device, dot_precision, upcast

# One configuration for every call: changing any of these changes the bits.
BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 64
NUM_WARPS = 4


@triton.jit(do_not_specialize=["M"])  # the step's token count changes every step
def _matmul_kernel(
    x_ptr, w_ptr, out_ptr, res_ptr, M, N, K,
    stride_xm, stride_wn, stride_om, stride_rm,
    HAS_RESIDUAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[m, n] = sum_k x[m, k] w[n, k] (fp32, K in BLOCK_K steps from 0), rounded to out's dtype;
    with a residual: out = residual + that rounded product (the sum rounded again), as torch adds."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + ks) < K
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xm + (k0 + ks)[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w = tl.load(w_ptr + cols.to(tl.int64)[None, :] * stride_wn + (k0 + ks)[:, None],
                    mask=col_ok[None, :] & k_ok[:, None], other=0.0)  # [BLOCK_K, BLOCK_N]
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
    inside = row_ok[:, None] & col_ok[None, :]
    out = acc.to(out_ptr.dtype.element_ty)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + rows.to(tl.int64)[:, None] * stride_rm + cols[None, :], mask=inside, other=0.0)
        out = (res.to(tl.float32) + out.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :], out, mask=inside)


def invariant_linear(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x: [M, K], w: [N, K] -> [M, N] (``F.linear`` without bias), every row independent of M.
    residual: [M, N], updated in place and returned (``residual += x @ w.T``, the product rounded
    first). x and w share a dtype; rows of each contiguous in K."""
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and w {tuple(w.shape)}: need [M, K] and [N, K]")
    if x.dtype != w.dtype or x.stride(1) != 1 or w.stride(1) != 1:
        raise ValueError(f"x and w must share a dtype with contiguous rows, got {x.dtype} {x.stride()} / "
                         f"{w.dtype} {w.stride()}")
    M, K = x.shape
    N = w.shape[0]
    if residual is not None and (residual.shape != (M, N) or residual.dtype != x.dtype or residual.stride(1) != 1):
        raise ValueError(f"residual must be [{M}, {N}] {x.dtype} with contiguous rows, got "
                         f"{tuple(residual.shape)} {residual.dtype}")
    check_device(x.device, w=w, residual=residual)
    out = residual if residual is not None else torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    _matmul_kernel[grid](
        x, w, out, out, M, N, K, x.stride(0), w.stride(0), out.stride(0), out.stride(0),
        HAS_RESIDUAL=residual is not None, UPCAST=upcast(x.dtype), DOT_PRECISION=dot_precision(x.dtype),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=NUM_WARPS,
    )
    return out


def invariant_linear_ref(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The same arithmetic in torch (fp32 product, rounded; then the residual added and rounded)."""
    out = (x.float() @ w.float().t()).to(x.dtype)
    return out if residual is None else (residual.float() + out.float()).to(x.dtype)
