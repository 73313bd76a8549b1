"""Choose the attention backend: Triton on CUDA, torch on CPU, or forced by name."""
from __future__ import annotations

import logging

import torch

from engine.attention.base import AttentionBackend
from engine.attention.torch_backend import TorchAttentionBackend

logger = logging.getLogger(__name__)


def get_backend(name: str = "auto", device: torch.device | str = "cpu") -> AttentionBackend:
    """``name``: "auto" (Triton on CUDA, else torch), "torch" or "triton"."""
    if name == "auto":
        name = "triton" if torch.device(device).type == "cuda" else "torch"
    if name == "torch":
        return TorchAttentionBackend()
    if name == "triton":
        from kernels.backend import TritonAttentionBackend  # imported lazily: pulls in triton

        return TritonAttentionBackend()
    raise ValueError(f"unknown attention backend {name!r} (auto, torch, triton)")
