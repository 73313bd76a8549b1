"""A worker's LoRA adapters: loaded from the path a request names on first use, kept by content
digest, the least recently used dropped past ``capacity`` (vLLM's ``--max-cpu-loras``).

Running sequences hold their adapter object, so dropping one here never touches a step in flight.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import torch

from engine.config import ModelConfig
from engine.lora.adapter import LoraAdapter, LoraError, load_adapter
from engine.request import LoraRef

logger = logging.getLogger(__name__)


class LoraRegistry:
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: str | torch.device, max_rank: int = 16,
                 capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.config, self.dtype, self.device = config, dtype, device
        self.max_rank = max_rank
        self.capacity = capacity
        self._loaded: OrderedDict[str, LoraAdapter] = OrderedDict()  # digest -> adapter, oldest use first

    def get(self, ref: LoraRef) -> LoraAdapter:
        """The adapter ``ref`` names, loaded from its path unless held already. A path whose files no
        longer match the digest the gateway registered is refused (its KV would be another's)."""
        adapter = self._loaded.pop(ref.digest, None)
        if adapter is None:
            adapter = load_adapter(ref.path, self.config, self.dtype, self.device, self.max_rank)
            if adapter.digest != ref.digest:
                raise LoraError(ref.path, f"its files changed since {ref.name!r} was registered: load it again")
            logger.info("loaded LoRA adapter %r from %s (rank %d)", ref.name, ref.path, adapter.rank)
            while len(self._loaded) >= self.capacity:
                self._loaded.popitem(last=False)
        self._loaded[ref.digest] = adapter
        return adapter

    def __len__(self) -> int:
        return len(self._loaded)
