"""fp32 products at a few rows on the CPU (``cpu_linear_fp32.cpp``, AVX2 + FMA or AVX-512): the weights
streamed once as they lie, for decode steps where torch's fp32 products stream slowly.

    y = linear(x, weight)                 # [T, in] @ [out, in]^T -> [T, out], fp32
    linear(x, weight, residual=h)         # h += x W^T in place
    linear(x, weight, norm=(w, eps))      # rms_norm(x) * w, then the product: one call

engine.fp32_products times it beside torch's ``F.linear`` and ``W @ X`` on the model's weights per
row-count bucket and takes it only where it is the fastest. The reference is ``F.linear``: the
kernel agrees with it to fp32 rounding (its sums run in another order). Without AVX2 and FMA, or
without a compiler, ``available()`` is False. Threads: torch's OpenMP pool, ``torch.get_num_threads()``.
"""
from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

from kernels import cpu_build

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".cpp")
IN_MULTIPLE = 8  # the kernel takes inputs in vectors of 8


@functools.cache
def _library() -> ctypes.CDLL | None:
    p, i64, i = cpu_build.PTR, cpu_build.I64, cpu_build.INT
    lib = cpu_build.load_functions(SOURCE, "torch computes the fp32 products",
                                   {"grove_linear_fp32": [p, i64, i64, i64, p, i64, p, i64, i, p, ctypes.c_float, i],
                                    "grove_linear_fp32_supported": []})
    if lib is not None and not lib.grove_linear_fp32_supported():
        logger.info("fp32 linear kernel: this CPU has no AVX2 with FMA, torch computes the fp32 products")
        return None
    return lib


def available() -> bool:
    """True when the kernel builds, loads and this CPU runs it (AVX2 with FMA)."""
    return _library() is not None


def takes(weight: torch.Tensor) -> bool:
    """Whether the kernel can multiply by this weight: [out, in] fp32 contiguous on the CPU, in % 8 == 0."""
    return (weight.dtype is torch.float32 and weight.dim() == 2 and weight.device.type == "cpu"
            and weight.shape[1] % IN_MULTIPLE == 0 and weight.is_contiguous() and available())


def linear(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None,
           norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """x: [T, in] fp32 -> [T, out] fp32 (``F.linear(x, weight)``). With ``residual`` ([T, out]
    fp32, contiguous): adds the product into it in place and returns it. With ``norm`` = (weight
    [in] fp32, eps): the product of HF's RMSNorm of x's rows (``linear_ref``), in the same call."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the fp32 linear kernel is not available (see the log for why)")
    out_f, in_f = weight.shape
    # the checks cost ~1 us of a call (a decode step makes ~120): cheapest attributes first
    if x.dtype is not torch.float32 or x.dim() != 2 or x.shape[1] != in_f or not x.is_cpu:
        raise ValueError(f"x must be [T, {in_f}] fp32 on the CPU, got {tuple(x.shape)} {x.dtype} on {x.device}")
    if not takes(weight):
        raise ValueError(f"the weight must be [out, in] fp32, contiguous, on the CPU, in a multiple of {IN_MULTIPLE}, "
                         f"got {tuple(weight.shape)} {weight.dtype} on {weight.device}")
    if x.stride(1) != 1:
        x = x.contiguous()
    T = x.shape[0]
    y, norm_ptr, eps = cpu_build.product_operands(T, out_f, in_f, torch.float32, residual, norm)
    if T == 0:
        return y
    rc = lib.grove_linear_fp32(x.data_ptr(), T, in_f, x.stride(0), weight.data_ptr(), out_f, y.data_ptr(), out_f,
                               residual is not None, norm_ptr, eps, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"the fp32 linear kernel returned {rc}")
    return y


def linear_ref(x: torch.Tensor, weight: torch.Tensor, norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """The readable reference: HF's RMSNorm (``norm``), then ``F.linear``."""
    if norm is not None:
        norm_w, eps = norm
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm_w
    return torch.nn.functional.linear(x, weight)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ok = available()
    logger.info("fp32 linear kernel: %s", cpu_build.library_path(SOURCE) if ok else "not available on this machine")
    raise SystemExit(0 if ok else 1)
