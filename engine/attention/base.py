"""The attention backend interface every implementation (torch reference, Triton) follows."""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import torch

from engine.batch import AttentionMetadata
from engine.rope import apply_rotary_


class KVLayerCache(NamedTuple):
    """One layer's view of the paged pool; both are strided views, not copies.

    k, v: [num_blocks, block_size, num_kv_heads, head_dim]
    """

    k: torch.Tensor
    v: torch.Tensor


class AttentionBackend(Protocol):
    name: str
    # attends a step's sequences in padded groups (engine.attention.grouping), so a step where some
    # decodes draft and others do not pays for one more group: the lookahead planner prices it
    pads_groups: bool

    def plan(self, meta: AttentionMetadata) -> Any:
        """Build whatever the backend needs for this step, once; every layer reuses it."""
        ...

    def write_kv(self, cache: KVLayerCache, k: torch.Tensor, v: torch.Tensor, plan: Any) -> None:
        """Store the step's new K/V ([T, num_kv_heads, head_dim]) at ``meta.slot_mapping``."""
        ...

    def rope_write_kv(self, qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, cache: KVLayerCache,
                      plan: Any, num_heads: int) -> torch.Tensor:
        """Rotate the q and k heads of ``qkv`` ([T, num_heads + 2 kv_heads, head_dim]) in place, store
        its k and v heads as ``write_kv`` does; returns q, [T, num_heads, head_dim] (a view of qkv).
        ``rope_then_write_kv`` is the way every backend without a fused kernel does it."""
        ...

    def attend(self, q: torch.Tensor, cache: KVLayerCache, plan: Any, scale: float) -> torch.Tensor:
        """q: [T, num_heads, head_dim] -> [T, num_heads, head_dim].

        Each query token sees its sequence's cached tokens and, among the step's new tokens, the
        ones ``meta.tree_mask`` allows (causal for chains). ``write_kv`` has run first.
        """
        ...

    def copy_slots(self, pool: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Move K/V of every layer from flat slots ``src`` to ``dst`` ([N] each) in place.

        pool: [num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]. Used to compact an
        accepted lookahead path into consecutive slots. ``src`` and ``dst`` may overlap only when
        every dst[i] <= src[i] and both are increasing (the compaction case): copy in order.
        """
        ...


def rope_then_write_kv(backend: AttentionBackend, qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor,
                       cache: KVLayerCache, plan: Any, num_heads: int) -> torch.Tensor:
    """``AttentionBackend.rope_write_kv`` in torch ops: the rotary embedding (engine.rope), then
    the backend's ``write_kv``."""
    kvh = cache.k.shape[2]
    apply_rotary_(qkv[:, : num_heads + kvh], cos, signed_sin)  # q and k heads together
    q, k, v = qkv.split([num_heads, kvh, kvh], dim=1)
    backend.write_kv(cache, k, v, plan)
    return q
