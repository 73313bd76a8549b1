"""Launch helpers shared by the kernels: interpreter detection, sizes, SM count, dot precision."""
from __future__ import annotations

import functools

import torch
import triton


def interpreting() -> bool:
    """True when kernels run under ``TRITON_INTERPRET=1`` (numpy on CPU tensors)."""
    return bool(triton.knobs.runtime.interpret)


def use_autotune(device: torch.device) -> bool:
    """Autotune only on CUDA; the interpreter runs one fixed config."""
    return device.type == "cuda" and not interpreting()


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; 1 off CUDA (no parallelism to win by splitting)."""
    if device.type != "cuda" or interpreting():
        return 1
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


def upcast(dtype: torch.dtype) -> bool:
    """Compute in fp32 after loading: the interpreter gets bf16 arithmetic silently wrong."""
    return interpreting() and dtype == torch.bfloat16


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs stay exact ("ieee", no tf32 rounding); 16-bit inputs ignore the setting."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_device(device: torch.device, **tensors: torch.Tensor | None) -> None:
    """Every tensor a kernel reads must be on ``device``: a CUDA kernel handed a host tensor fails
    with Triton's "cannot be accessed from Triton (cpu tensor?)", which names no argument."""
    wrong = {name: t.device for name, t in tensors.items() if t is not None and t.device != device}
    if wrong:
        raise ValueError(f"tensors must be on {device}: " + ", ".join(f"{n} is on {d}" for n, d in wrong.items()))


def check_paged_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim] views sharing one set of strides."""
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"k/v cache must be [num_blocks, block_size, kv_heads, head_dim], "
                         f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if k_cache.stride() != v_cache.stride():
        raise ValueError(f"k and v cache views must share strides, got {k_cache.stride()} and {v_cache.stride()}")
    if k_cache.dtype != v_cache.dtype or k_cache.device != v_cache.device:
        raise ValueError("k and v cache must share dtype and device")
    if k_cache.stride(3) != 1:
        raise ValueError(f"head_dim must be the innermost, contiguous dimension (stride {k_cache.stride(3)})")
