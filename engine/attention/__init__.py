"""Attention backends: one interface, a readable torch implementation, Triton on CUDA."""
from engine.attention.base import AttentionBackend, KVLayerCache
from engine.attention.selector import get_backend

__all__ = ["AttentionBackend", "KVLayerCache", "get_backend"]
