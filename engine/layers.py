"""Small stateless building blocks of the decoder (gpt-fast style: plain functions over tensors).

Decode on CPU runs a few hundred of these per step over tiny tensors, so each is written with as few
torch calls as its arithmetic allows (in-place where the intermediate is private).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from engine import fp32_products
from kernels import cpu_linear, cpu_linear_fp32, cpu_silu_mul
from kernels.cpu_linear import PackedLinear

# A projection's weight as the products take it: [out, in], or packed for Grove's CPU kernel
Weight = torch.Tensor | PackedLinear


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: normalise in fp32, cast back, then scale. x: [T, hidden]."""
    if _gpu_invariant(x):
        from kernels.invariant_rms_norm import invariant_rms_norm  # Triton: imported on GPUs only

        return invariant_rms_norm(x.contiguous(), weight, eps)
    if x.dtype == torch.float32:  # HF's arithmetic, bit for bit, in 6 ops (F.rms_norm runs ~10 on CPU)
        inv = x.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
        return (x * inv).mul_(weight)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


# Dtypes whose forward is row-invariant (a row's bits do not depend on what shares its step): the
# products here (bf16 through Grove's CPU kernel by construction, on a GPU through its Triton
# kernels, else where the math library's are: the engine checks at start, products_row_invariant
# and engine.invariance)
# and the attention in engine.attention.torch_backend (fp64) and cpu_backend (the C++ kernel is
# row-invariant in every dtype). In fp32 rounding differences are far below greedy's margins, and
# it keeps its faster paths.
ROW_INVARIANT_DTYPES = (torch.bfloat16, torch.float16)


def _gpu_invariant(x: torch.Tensor) -> bool:
    """16-bit on a GPU: products and norms by Grove's Triton kernels, one fixed tile configuration
    for every row count (kernels/invariant_matmul.py), since cuBLAS's are not row-invariant (an
    H200 changed bf16 greedy output with lookahead on). fp32 keeps cuBLAS."""
    return x.is_cuda and x.dtype in ROW_INVARIANT_DTYPES


def pack_weight(weight: torch.Tensor) -> Weight:
    """The weight laid out for the products at load time: packed for Grove's CPU kernel
    (kernels.cpu_linear) where it runs (bf16 on a CPU with AVX512-BF16, or with AVX2 and FMA),
    else as it is.

    The kernel streams the weights once per step (SmolLM2's products at 1 token: 5 ms against
    26-32 for torch's bf16 matmul on an AMD EPYC without AMX) and is row-invariant by construction.
    On a CPU with AMX it multiplies on AMX tiles (an Intel Xeon: 14-15 ms from 1 to 16 tokens, 18
    at 32, where its VDPBF16PS path takes 12, 33 and 65: scripts/bench_cpu_linear.py). On an
    AVX2-only AMD EPYC (Zen 1) its FMA path takes 16 ms at 1 token and 83 at 16, where torch's bf16
    products take 32 and 460 and are not row-invariant (lookahead would be off).
    """
    if weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and weight.shape[1] % 2 == 0 \
            and cpu_linear.available():
        return cpu_linear.pack(weight)
    return weight


def step_tile(weight: Weight) -> int:
    """Tokens the products take in one pass over the weights: a step's cost jumps just past each
    multiple (the speculator aligns its steps to it). Grove's CPU kernel: its tile; on a GPU in 16
    bits, the row-invariant kernel's row tile; torch's products run on 16 columns (AMX,
    avx512_bf16, tensor cores on a GPU)."""
    if isinstance(weight, PackedLinear):
        return weight.tile_tokens
    if _gpu_invariant(weight):
        from kernels.invariant_matmul import BLOCK_M

        return BLOCK_M
    return 16


def _wx_layout(x: torch.Tensor) -> bool:
    """16-bit on CPU without the kernel: ``W @ X`` at every T, for two reasons.

    - Speed: in bf16 it keeps a T-token step near the cost of a 1-token one (AMX); ``F.linear`` does
      not (see shared/research/environment.md).
    - Row invariance: ``mm(W, X.t())`` gives a row the same bits whatever else is in X (checked
      for T = 1..340 over the model's shapes in tests/engine/test_batch_invariance.py), and at T = 1
      the same bits as ``F.linear``. ``F.linear`` at T > 1 and the fused ``addmm`` residual do not.
      Lookahead verifies T tokens where plain decoding runs one, so this is what makes it exact.

    fp32 takes ``F.linear``, ``W @ X`` or Grove's fp32 kernel, whichever was timed fastest here for
    the row count (engine.fp32_products).
    """
    return x.dtype in ROW_INVARIANT_DTYPES and x.device.type == "cpu"


# The W @ X product is row-invariant only up to a width: on 2 threads the [576, 1536] projection of
# SmolLM2 switches algorithm between 256 and 340 columns (and on 1 thread past 576). Wider inputs
# are cut into pieces of this many columns, so every row is computed in a product the checks cover.
WX_MAX_COLUMNS = 128


def _wx_mm(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight: [out, in], x: [T, in] -> [T, out] as ``W @ X.t()``, in pieces of <= WX_MAX_COLUMNS.

    One column is computed as two (the row twice): the bf16 product over SmolLM2's layers takes
    21 ms for one column and 14 ms for two on this CPU, and by row invariance the row's bits are
    the same either way.
    """
    if x.shape[0] == 1:
        return torch.mm(weight, x.expand(2, -1).t())[:, :1].t()
    if x.shape[0] <= WX_MAX_COLUMNS:
        return torch.mm(weight, x.t()).t()
    return torch.cat([_wx_mm(weight, part) for part in x.split(WX_MAX_COLUMNS)])


def products_row_invariant(weights: Sequence[Weight], rows: Sequence[int] = (0, 1, 2, 16, WX_MAX_COLUMNS - 1),
                           widths: Sequence[int] = (2, 3, 17, 64, WX_MAX_COLUMNS)) -> bool:
    """Whether ``linear`` gives a row the same bits at these step widths as alone, on these weights
    and this machine. The math library picks its kernels by device: on an AMD EPYC (avx512_bf16, no
    AMX, no avx512_fp16) bf16 products keep every row's bits while fp16 ones differ at 2 columns
    from 1; a GPU's BLAS picks its kernel by the row count. A few products per weight (lm_head
    included: ~50 ms in all for SmolLM2 on a CPU)."""
    gen = torch.Generator().manual_seed(0)
    for w in weights:
        device = "cpu" if isinstance(w, PackedLinear) else w.device
        x = torch.randn(max(widths), w.shape[1], generator=gen).to(device=device, dtype=w.dtype)
        alone = {i: linear(x[i:i + 1], w) for i in rows}
        for t in widths:
            out = linear(x[:t], w)
            if any(not torch.equal(out[i:i + 1], row) for i, row in alone.items() if i < t):
                return False
    return True


def _packed_linear(x: torch.Tensor, weight: PackedLinear, bias: torch.Tensor | None,
                   norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    out = cpu_linear.linear(x, weight, norm=norm)
    return out.add_(bias) if bias is not None else out


def linear(x: torch.Tensor, weight: Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x: [T, in], weight: [out, in] -> [T, out]."""
    if isinstance(weight, PackedLinear):
        return _packed_linear(x, weight, bias)
    if _gpu_invariant(x):
        from kernels.invariant_matmul import invariant_linear

        out = invariant_linear(x.contiguous(), weight)
        return out.add_(bias) if bias is not None else out
    if _wx_layout(x):
        out = _wx_mm(weight, x)
        return out + bias if bias is not None else out
    layout = fp32_products.choice(x, weight)
    if layout == fp32_products.LINEAR:
        return F.linear(x, weight, bias)
    out = fp32_products.product(weight, x) if layout == fp32_products.WX else cpu_linear_fp32.linear(x, weight)
    return out.add_(bias) if bias is not None else out


def norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: Weight,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(rms_norm(x, norm_weight, eps), weight, bias)``; one kernel call where the weight is
    packed (the norm's eight torch ops cost ~1 ms of a 9 ms bf16 decode step over 60 norms), or
    where fp32 products take Grove's fp32 kernel (its six, ~6 ms of a 51 ms fp32 step on a Zen 1)."""
    if isinstance(weight, PackedLinear):
        return _packed_linear(x, weight, bias, norm=(norm_weight, eps))
    if not _gpu_invariant(x) and fp32_products.choice(x, weight) == fp32_products.KERNEL:  # linear's order
        out = cpu_linear_fp32.linear(x, weight, norm=(norm_weight, eps))
        return out.add_(bias) if bias is not None else out
    return linear(rms_norm(x, norm_weight, eps), weight, bias)


def linear_residual(x: torch.Tensor, weight: Weight, residual: torch.Tensor) -> torch.Tensor:
    """residual += x @ weight.t(), in place (16-bit: the product rounded, then added, as HF does).
    x: [T, in], weight: [out, in], residual: [T, out] contiguous."""
    if isinstance(weight, PackedLinear):
        return cpu_linear.linear(x, weight, residual=residual)
    if _gpu_invariant(x):
        from kernels.invariant_matmul import invariant_linear

        return invariant_linear(x.contiguous(), weight, residual=residual)
    if _wx_layout(x):
        # the product comes transposed ([out, T] memory): adding it into the residual's [T, out] is
        # 2x faster from a contiguous copy than from the strided view (17 rows: 12.5 vs 29 us)
        return residual.add_(_wx_mm(weight, x).contiguous())
    layout = fp32_products.choice(x, weight)
    if layout == fp32_products.WX:
        return residual.add_(fp32_products.product(weight, x))
    if layout == fp32_products.KERNEL:
        return cpu_linear_fp32.linear(x, weight, residual=residual)
    return residual.addmm_(x, weight.t())


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [T, 2 * intermediate] -> [T, intermediate]. 16-bit on the CPU: Grove's kernel, the
    same bits as torch's two ops (kernels.cpu_silu_mul: 26 us against 100 for 16 of SmolLM2's rows)."""
    if gate_up.dtype in cpu_silu_mul.DTYPES and gate_up.is_cpu and cpu_silu_mul.available():
        return cpu_silu_mul.silu_and_mul(gate_up.contiguous())
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)
