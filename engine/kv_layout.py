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
class BlockGeometry:
    """What the store's pools hold: one block is [num_layers, 2, block_size, num_kv_heads, head_dim].

    One store serves every model whose layout has this geometry; the trie keeps each model's
    namespace (KVLayout.compat_key()) apart.
    """

    dtype: str
    block_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        dtype_from_name(self.dtype)
        if min(self.block_size, self.num_layers, self.num_kv_heads, self.head_dim) <= 0:
            raise ValueError(f"invalid block geometry {self}")

    @classmethod
    def of(cls, layout: "KVLayout") -> "BlockGeometry":
        return cls(layout.dtype, layout.block_size, layout.num_layers, layout.num_kv_heads, layout.head_dim)

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    @property
    def block_shape(self) -> tuple[int, int, int, int, int]:
        return (self.num_layers, 2, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def block_bytes(self) -> int:
        n = torch.empty((), dtype=self.torch_dtype).element_size()
        for s in self.block_shape:
            n *= s
        return n

    def mismatch(self, layout: "KVLayout") -> str | None:
        """Why blocks of ``layout`` cannot live in this store, or None when they can."""
        for name in ("dtype", "block_size", "num_layers", "num_kv_heads", "head_dim"):
            theirs, ours = getattr(layout, name), getattr(self, name)
            if theirs != ours:
                return f"{name} {theirs!r} does not match the store's {ours!r}"
        return None


@dataclass(frozen=True, slots=True)
class KVLayout:
    model_id: str  # content hash of the model's config + weights names, see engine.model_loader
    dtype: str  # "float32" | "bfloat16" | "float16"
    block_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        self.geometry  # validates dtype and sizes

    @property
    def geometry(self) -> BlockGeometry:
        return BlockGeometry.of(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    @property
    def block_shape(self) -> tuple[int, int, int, int, int]:
        return self.geometry.block_shape

    @property
    def block_bytes(self) -> int:
        return self.geometry.block_bytes

    def compat_key(self) -> str:
        """Namespace for cached KV: KV under one key is never served to another."""
        text = "|".join(
            [GROVE_VERSION, self.model_id, self.dtype, str(self.block_size), str(self.num_layers),
             str(self.num_kv_heads), str(self.head_dim)]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]
