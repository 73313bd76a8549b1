"""Choose the attention backend: Triton on CUDA, the C++ kernel on CPU (torch where it cannot be
built), or forced by name."""
from __future__ import annotations

import logging

import torch

from engine.attention.base import AttentionBackend
from engine.attention.cpu_backend import CpuAttentionBackend
from engine.attention.torch_backend import TorchAttentionBackend

logger = logging.getLogger(__name__)


def get_backend(name: str = "auto", device: torch.device | str = "cpu", head_dim: int = 64,
                sliding_window: int | None = None) -> AttentionBackend:
    """``name``: "auto" (Triton on CUDA when the kernels support the model, else torch; on CPU the
    C++ kernel when it builds, else torch), "torch", "triton", "cpu".

    The Triton kernels tile head_dim by powers of 2 and have no sliding-window mask (Mistral): such
    models run on the torch backend, and asking for "triton" with a window is an error.
    """
    if name == "triton" and sliding_window is not None:
        raise ValueError(f"the triton attention backend has no sliding window (model window {sliding_window}): "
                         "use --attention-backend torch")
    if name == "auto":
        kernel_ok = head_dim >= 16 and head_dim & (head_dim - 1) == 0 and sliding_window is None
        if torch.device(device).type == "cuda":
            name = "triton" if kernel_ok else "torch"
            if not kernel_ok:
                logger.info("attention on the torch backend (head_dim %d, sliding window %s)", head_dim, sliding_window)
        else:
            name = "cpu" if CpuAttentionBackend.available() else "torch"
    if name == "torch":
        return TorchAttentionBackend()
    if name == "cpu":
        if torch.device(device).type != "cpu":
            raise ValueError(f"the cpu attention backend runs on the CPU, not on {device}")
        if not CpuAttentionBackend.available():
            raise ValueError("the cpu attention backend could not be built here (see the log): use --attention-backend torch")
        return CpuAttentionBackend()
    if name == "triton":
        from kernels.backend import TritonAttentionBackend  # imported lazily: pulls in triton

        return TritonAttentionBackend()
    raise ValueError(f"unknown attention backend {name!r} (auto, torch, triton, cpu)")
