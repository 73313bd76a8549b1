"""Small stateless building blocks of the decoder (gpt-fast style: plain functions over tensors)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: normalise in fp32, cast back, then scale. x: [T, hidden]."""
    if x.dtype == torch.float32:  # one fused op; the same arithmetic when nothing needs casting
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x: [T, in], weight: [out, in] -> [T, out].

    In bf16 on CPU the ``W @ X`` layout keeps a T-token step near the cost of a 1-token one (AMX);
    ``F.linear`` does not (see shared/research/environment.md). fp32 prefers ``F.linear``.
    """
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.shape[0] > 1:
        out = torch.mm(weight, x.t()).t()
        return out + bias if bias is not None else out
    return F.linear(x, weight, bias)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [T, 2 * intermediate] -> [T, intermediate]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
