"""Small stateless building blocks of the decoder (gpt-fast style: plain functions over tensors).

Decode on CPU runs a few hundred of these per step over tiny tensors, so each is written with as few
torch calls as its arithmetic allows (in-place where the intermediate is private).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: normalise in fp32, cast back, then scale. x: [T, hidden]."""
    if x.dtype == torch.float32:  # HF's arithmetic, bit for bit, in 6 ops (F.rms_norm runs ~10 on CPU)
        inv = x.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
        return (x * inv).mul_(weight)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _wx_layout(x: torch.Tensor) -> bool:
    """In bf16 on CPU the ``W @ X`` layout keeps a T-token step near the cost of a 1-token one (AMX);
    ``F.linear`` does not (see shared/research/environment.md). fp32 prefers ``F.linear``."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.shape[0] > 1


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x: [T, in], weight: [out, in] -> [T, out]."""
    if _wx_layout(x):
        out = torch.mm(weight, x.t()).t()
        return out + bias if bias is not None else out
    return F.linear(x, weight, bias)


def linear_residual(x: torch.Tensor, weight_t: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual += x @ weight_t, in place (one addmm). x: [T, in], weight_t: [in, out] (weight.t())."""
    if _wx_layout(x):
        return residual.add_(torch.mm(weight_t.t(), x.t()).t())
    return residual.addmm_(x, weight_t)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [T, 2 * intermediate] -> [T, intermediate]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)
