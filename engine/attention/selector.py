"""Choose the attention backend: Triton on CUDA, torch on CPU, or forced by name."""
from __future__ import annotations

import logging

import torch

from engine.attention.base import AttentionBackend
from engine.attention.torch_backend import TorchAttentionBackend

logger = logging.getLogger(__name__)


def get_backend(name: str = "auto", device: torch.device | str = "cpu", head_dim: int = 64) -> AttentionBackend:
    """``name``: "auto" (Triton on CUDA when the kernels support head_dim, else torch), "torch", "triton"."""
    if name == "auto":
        kernel_ok = head_dim >= 16 and head_dim & (head_dim - 1) == 0  # the kernels tile head_dim by powers of 2
        name = "triton" if torch.device(device).type == "cuda" and kernel_ok else "torch"
    if name == "torch":
        return TorchAttentionBackend()
    if name == "triton":
        from kernels.backend import TritonAttentionBackend  # imported lazily: pulls in triton

        return TritonAttentionBackend()
    raise ValueError(f"unknown attention backend {name!r} (auto, torch, triton)")
