"""Rotary embedding + K/V write on the CPU (``cpu_rope.cpp``), one call per layer, bf16 or fp32.

    rope_write_kv(qkv, cos, signed_sin, k_cache, v_cache, write_block, write_offset, num_heads)
    rope_write_kv_ref(...)   # the torch reference: engine.rope.apply_rotary_ and index_put_

qkv [T, H + 2 KVH, D] is rotated in place (its q and k heads) and its k and v heads are stored at
(write_block[t], write_offset[t]) of the layer's cache views [num_blocks, block_size, KVH, D]. Bit
for bit the reference's result (each op rounded to bf16 as torch rounds it; in fp32 each rounded once). Without a C++ compiler
``available()`` is False and the caller keeps the torch path.
"""
from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

from engine.rope import apply_rotary_
from kernels import cpu_build

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".cpp")
MAX_HEAD_DIM = 512  # cpu_rope.cpp's scratch per head
_ENTRY = {torch.bfloat16: "grove_rope_write_kv", torch.float32: "grove_rope_write_kv_f32"}  # by qkv's dtype


@functools.cache
def _library() -> ctypes.CDLL | None:
    p, i64 = cpu_build.PTR, cpu_build.I64
    args = [p, i64, i64, i64, i64, i64, p, p, p, p, i64, i64, i64, p, p, cpu_build.INT]
    return cpu_build.load_functions(SOURCE, "torch applies the rotary embedding and writes K/V",
                                    {"grove_rope_write_kv": args, "grove_rope_write_kv_f32": args})


def available() -> bool:
    return _library() is not None


def supports(qkv: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the kernel takes this step's tensors (else the torch path)."""
    D = qkv.shape[-1]
    return (qkv.dtype in _ENTRY and k_cache.dtype is qkv.dtype and qkv.is_cpu and D % 2 == 0
            and D <= MAX_HEAD_DIM and available())


def check_layout(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int) -> None:
    """What the kernel assumes of a layer's tensors, checked once per cache by the caller (a step's
    layers all share one layout): ValueError if not."""
    _, heads, D = qkv.shape
    kvh = k_cache.shape[2]
    if heads != num_heads + 2 * kvh or k_cache.shape[3] != D or v_cache.shape != k_cache.shape:
        raise ValueError(f"qkv {tuple(qkv.shape)} does not match {num_heads} q heads and a cache of "
                         f"{tuple(k_cache.shape)} / {tuple(v_cache.shape)}")
    if qkv.stride(2) != 1 or qkv.stride(1) != D:
        raise ValueError("qkv's heads and head_dim must be contiguous")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("the k and v caches must share strides, head_dim contiguous")
    if not supports(qkv, k_cache):
        raise ValueError(f"the kernel takes bf16 or fp32 CPU tensors (cache alike) with an even head_dim <= {MAX_HEAD_DIM}")


def rope_write_kv(qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, write_block: torch.Tensor, write_offset: torch.Tensor,
                  num_heads: int) -> None:
    """qkv: [T, H + 2 KVH, D] bf16 or fp32 (heads and head_dim contiguous); cos, signed_sin: [T, 1, D]
    of its dtype (``RotaryEmbedding.lookup``, contiguous); k_cache, v_cache: [num_blocks, block_size,
    KVH, D] views of its dtype (``check_layout``); write_block, write_offset: [T] int64, contiguous.

    A decode step calls this once a layer (~30 us of Python a call matter at ~1 ms a step), so only
    what differs from step to step is checked here."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the CPU rope kernel is not available (see the log for why)")
    T, _, D = qkv.shape
    if cos.numel() != T * D or signed_sin.numel() != T * D or not (cos.is_contiguous() and signed_sin.is_contiguous()):
        raise ValueError(f"cos and signed_sin must be contiguous [T, 1, {D}] tables for T = {T}")
    if cos.dtype is not qkv.dtype or signed_sin.dtype is not qkv.dtype:
        raise ValueError(f"cos and signed_sin must be {qkv.dtype} as qkv is, got {cos.dtype} and {signed_sin.dtype}")
    if write_block.shape != (T,) or write_offset.shape != (T,) or write_block.dtype is not torch.int64 \
            or write_offset.dtype is not torch.int64:
        raise ValueError(f"write_block and write_offset must be int64 [{T}]")
    if T == 0:
        return
    ks = k_cache.stride()
    rc = getattr(lib, _ENTRY[qkv.dtype])(qkv.data_ptr(), T, qkv.stride(0), num_heads, k_cache.shape[2], D, cos.data_ptr(),
                                 signed_sin.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), ks[0], ks[1], ks[2],
                                 write_block.contiguous().data_ptr(), write_offset.contiguous().data_ptr(),
                                 torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"the CPU rope kernel returned {rc} (head_dim {D})")


def rope_write_kv_ref(qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, write_block: torch.Tensor, write_offset: torch.Tensor,
                      num_heads: int) -> None:
    """The torch path the kernel replaces (and must equal bit for bit)."""
    T, _, D = qkv.shape
    kvh = k_cache.shape[2]
    apply_rotary_(qkv[:, : num_heads + kvh], cos.view(T, 1, D), signed_sin.view(T, 1, D))
    _, k, v = qkv.split([num_heads, kvh, kvh], dim=1)
    k_cache.index_put_((write_block, write_offset), k)
    v_cache.index_put_((write_block, write_offset), v)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ok = available()
    logger.info("CPU rope kernel: %s", cpu_build.library_path(SOURCE) if ok else "not available on this machine")
    raise SystemExit(0 if ok else 1)
