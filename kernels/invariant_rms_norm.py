"""Row-invariant RMSNorm on a GPU: one program per row, the row's sum of squares in one fixed order.

torch's reduction kernels choose how to split a row by the tensor's shape, so a row's norm can round
differently in a wide step than alone; with lookahead that would change greedy output (see
kernels/invariant_matmul.py). HF's arithmetic: normalise in fp32, round to the input's dtype, then
multiply by the weight (rounded again).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch import check_device, next_pow2

NUM_WARPS = 4  # fixed: the reduction's order follows the threads' layout


@triton.jit(do_not_specialize=["num_rows"])
def _rms_norm_kernel(
    x_ptr, w_ptr, out_ptr, num_rows, eps, stride_x, stride_o,
    HIDDEN: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[r] = w * round(x[r] * rsqrt(mean(x[r]^2) + eps)), in fp32 until the rounding."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < HIDDEN
    x = tl.load(x_ptr + row * stride_x + cols, mask=inside, other=0.0).to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, axis=0) / HIDDEN + eps)
    y = (x * inv).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (w * y).to(out_ptr.dtype.element_ty), mask=inside)


def invariant_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [T, hidden], weight: [hidden] -> [T, hidden] in x's dtype."""
    if x.dim() != 2 or weight.shape != (x.shape[1],) or x.stride(1) != 1:
        raise ValueError(f"x must be [T, hidden] with contiguous rows and weight [hidden], got "
                         f"{tuple(x.shape)} {x.stride()} / {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight must be {x.dtype}, got {weight.dtype}")
    check_device(x.device, weight=weight)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.shape[0]:
        _rms_norm_kernel[(x.shape[0],)](x, weight, out, x.shape[0], eps, x.stride(0), out.stride(0),
                                        HIDDEN=x.shape[1], BLOCK=next_pow2(x.shape[1]), num_warps=NUM_WARPS)
    return out


def invariant_rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's LlamaRMSNorm in torch."""
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return weight * y
