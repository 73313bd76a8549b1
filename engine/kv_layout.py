"""The one KV block layout shared by the engine, the kvstore and the data planes.

A block holds ``block_size`` consecutive tokens of one sequence for *every* layer, contiguous in
memory, so one block is one transfer descriptor (NIXL) or one byte range (gRPC fallback):

    block: [num_layers, 2 (k, v), block_size, num_kv_heads, head_dim]
    pool:  [num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

GROVE_VERSION = "0.1.0"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r} (one of {sorted(_DTYPES)})") from None


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")


@dataclass(frozen=True, slots=True)
class KVLayout:
    model_id: str  # content hash of the model's config + weights names, see engine.model_loader
    dtype: str  # "float32" | "bfloat16" | "float16"
    block_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        dtype_from_name(self.dtype)
        if self.block_size <= 0 or self.num_layers <= 0 or self.num_kv_heads <= 0 or self.head_dim <= 0:
            raise ValueError(f"invalid KV layout {self}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    @property
    def block_shape(self) -> tuple[int, int, int, int, int]:
        return (self.num_layers, 2, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def block_numel(self) -> int:
        n = 1
        for s in self.block_shape:
            n *= s
        return n

    @property
    def block_bytes(self) -> int:
        return self.block_numel * torch.empty((), dtype=self.torch_dtype).element_size()

    def compat_key(self) -> str:
        """Namespace for cached KV: KV under one key is never served to another."""
        text = "|".join(
            [GROVE_VERSION, self.model_id, self.dtype, str(self.block_size), str(self.num_layers),
             str(self.num_kv_heads), str(self.head_dim)]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]
