"""bf16 products on the CPU (``cpu_linear.cpp``: AMX tiles, else AVX512-BF16, else AVX2 + FMA):
built once with the system C++ compiler, called through ctypes on the tensors' memory.

    packed = pack(weight)                 # once, at load: [out, in] -> PackedLinear
    y = linear(x, packed)                 # [T, in] -> [T, out], bf16
    linear(x, packed, residual=h)         # h += x W^T in place (the product rounded, then added)

Each packed weight takes one of two paths, fixed at packing: AMX tiles where the CPU has them and
``in`` is a multiple of 32, else the vector path the library was built with (VDPBF16PS on CPUs with
AVX512-BF16, FMA on 8 fp32 lanes on CPUs with AVX2 only). Each is row-invariant by construction (see the .cpp): a
token's output has the same bits whatever else shares the step, which is what lookahead needs to
be exact. ``linear_ref`` is the readable reference (fp32 sums, rounded once): the kernel agrees
with it to bf16 rounding, not bit for bit, since the order of the sums differs.

Without AVX2 and FMA (or without a compiler) ``available()`` is False and the engine keeps torch's
products. Threads: the kernel runs in torch's OpenMP pool with ``torch.get_num_threads()`` threads.
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
PANEL = 32  # output rows per packed panel (cpu_linear.cpp)
AMX_TILE_TOKENS = 16  # AMX path: tokens per A tile (AMX_ROWS)
AMX_K = 32  # AMX path: the inputs must be a multiple of this (one A tile row)


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = cpu_build.load(SOURCE, "torch computes the products")
    if lib is None:
        return None
    lib.grove_linear_supported.restype = ctypes.c_int
    if not lib.grove_linear_supported():
        logger.info("CPU linear kernel: this CPU has neither AVX512-BF16 nor AVX2 with FMA, torch computes the products")
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.grove_linear_bf16.argtypes = [p, i64, i64, i64, p, i64, p, i64, ctypes.c_int, p, ctypes.c_float, ctypes.c_int]
    lib.grove_linear_bf16.restype = ctypes.c_int
    lib.grove_linear_amx.argtypes = lib.grove_linear_bf16.argtypes
    lib.grove_linear_amx.restype = ctypes.c_int
    return lib


def available() -> bool:
    """True when the kernel builds, loads and this CPU runs it (AVX512-BF16, or AVX2 with FMA)."""
    return _library() is not None


def _require() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError("the CPU linear kernel is not available (see the log for why)")
    return lib


@functools.cache
def vector_path() -> str:
    """The library's non-AMX path: "VDPBF16PS" (AVX512-BF16) or "AVX2" (FMA on 8 fp32 lanes)."""
    return {1: "VDPBF16PS", 2: "AVX2"}[_require().grove_linear_supported()]


@functools.cache
def vector_tile_tokens() -> int:
    """The vector path's tokens per pass over a panel group (MAX_C): a step's cost jumps past each multiple."""
    return int(_require().grove_linear_tile_tokens())


@functools.cache
def amx_available() -> bool:
    """True when the kernel was built with AMX (the CPU has amx_bf16) and Linux granted the tiles."""
    lib = _library()
    return lib is not None and bool(lib.grove_linear_amx_supported())


@dataclass(frozen=True, slots=True)
class PackedLinear:
    """A bf16 weight [out, in] in the kernel's layout: data[p, i // 2, r, i % 2] = W[32 p + r, i].
    Both paths read this layout (for AMX it is the B tiles' own, at a row stride of 32 rows)."""

    data: torch.Tensor  # [ceil(out / 32), in / 2, 32, 2] bf16, contiguous; rows past out are zero
    out_features: int
    in_features: int
    ptr: int  # data.data_ptr(), taken once at packing (a decode step makes ~120 calls)
    amx: bool  # the path, fixed for the weight so that its rows always take the same one

    @property
    def tile_tokens(self) -> int:
        """Tokens the path takes in one pass over the weights: a step's cost jumps just past each multiple."""
        return AMX_TILE_TOKENS if self.amx else vector_tile_tokens()

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    def unpack(self) -> torch.Tensor:
        """The weight back as [out, in] (for checks)."""
        panels = self.data.shape[0]
        return self.data.permute(0, 2, 1, 3).reshape(panels * PANEL, self.in_features)[: self.out_features]


def pack(weight: torch.Tensor, amx: bool | None = None) -> PackedLinear:
    """weight: [out, in] bf16 on the CPU, in even. ``amx``: the path; by default AMX where the CPU
    has it and ``in`` is a multiple of AMX_K (True where it cannot run is an error)."""
    if weight.dim() != 2 or weight.dtype != torch.bfloat16 or weight.device.type != "cpu":
        raise ValueError(f"pack takes a 2-d bf16 CPU weight, got {tuple(weight.shape)} {weight.dtype} on {weight.device}")
    out, inp = weight.shape
    if inp % 2:
        raise ValueError(f"the kernel takes inputs in pairs: in_features {inp} is odd")
    can_amx = amx_available() and inp % AMX_K == 0
    if amx and not can_amx:
        raise ValueError(f"the AMX path needs AMX and in_features a multiple of {AMX_K} (got {inp})")
    panels = -(-out // PANEL)
    padded = torch.zeros(panels * PANEL, inp, dtype=weight.dtype)
    padded[:out] = weight
    data = padded.view(panels, PANEL, inp // 2, 2).permute(0, 2, 1, 3).contiguous()
    return PackedLinear(data, out, inp, data.data_ptr(), can_amx if amx is None else amx)


def linear(x: torch.Tensor, weight: PackedLinear, residual: torch.Tensor | None = None,
           norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """x: [T, in] bf16 -> [T, out] bf16. With ``residual`` ([T, out] bf16, contiguous): adds the
    product (rounded to bf16) into it in place and returns it, as ``residual += x @ W.t()`` does.
    With ``norm`` = (weight [in] bf16, eps): the product of HF's RMSNorm of x's rows, normalized in
    the same call (``linear_ref``'s arithmetic; the sum of squares in the kernel's order)."""
    lib = _require()
    # the checks cost ~1 us of a call's ~3 (a decode step makes ~120): cheapest attributes first
    if x.dtype is not torch.bfloat16 or x.dim() != 2 or x.shape[1] != weight.in_features or not x.is_cpu:
        raise ValueError(f"x must be [T, {weight.in_features}] bf16 on the CPU, got {tuple(x.shape)} {x.dtype} on {x.device}")
    if not x.is_contiguous():
        x = x.contiguous()
    T = x.shape[0]
    y, norm_ptr, eps = cpu_build.product_operands(T, weight.out_features, weight.in_features, torch.bfloat16, residual, norm)
    if T == 0:
        return y
    call = lib.grove_linear_amx if weight.amx else lib.grove_linear_bf16
    rc = call(x.data_ptr(), T, weight.in_features, weight.in_features, weight.ptr, weight.out_features, y.data_ptr(),
              weight.out_features, residual is not None, norm_ptr, eps, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"the CPU linear kernel ({'AMX' if weight.amx else vector_path()}) returned {rc}")
    return y


def linear_ref(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None,
               norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """The readable reference: fp32 sums of bf16 products, rounded to bf16 once (then added to the
    residual and rounded again). x: [T, in], weight: [out, in]. ``norm``: HF's RMSNorm first
    (fp32 statistics, the normalized row rounded, then scaled by the weight in bf16)."""
    if norm is not None:
        norm_w, eps = norm
        xf = x.float()
        x = norm_w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(torch.bfloat16)
    y = (x.float() @ weight.float().t()).to(torch.bfloat16)
    return y if residual is None else residual.add_(y)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ok = available()
    logger.info("CPU linear kernel: %s%s", cpu_build.library_path(SOURCE) if ok else "not available on this machine",
                f" ({vector_path()}{', AMX tiles' if amx_available() else ''})" if ok else "")
    raise SystemExit(0 if ok else 1)
