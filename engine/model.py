"""Grove's decoder for the llama / qwen2 / mistral families.

One ``forward`` serves every phase: the batch (engine.batch.Batch) says which tokens are new, where
their K/V go and what they may see; prefill chunks, decode tokens and lookahead trees differ only in
the batch. Weights are fused at load time (qkv, gate_up) so each layer is five matmuls.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention.base import AttentionBackend
from engine.batch import Batch
from engine.config import ModelConfig
from engine.kv_pool import KVPool
from engine.layers import linear, rms_norm, silu_and_mul
from engine.rope import RotaryEmbedding, apply_rotary


@dataclass(slots=True)
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor  # [q_size + 2 * kv_size, hidden]
    qkv_bias: torch.Tensor | None  # [q_size + 2 * kv_size] (qwen2)
    o: torch.Tensor  # [hidden, q_size]
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor  # [hidden, intermediate]


@dataclass(slots=True)
class ModelWeights:
    embed: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: torch.Tensor  # [hidden]
    lm_head: torch.Tensor  # [vocab, hidden] (the embedding itself when tied)


class Model:
    def __init__(self, config: ModelConfig, weights: ModelWeights, backend: AttentionBackend) -> None:
        self.config = config
        self.weights = weights
        self.backend = backend
        self.dtype = weights.embed.dtype
        self.device = weights.embed.device
        self.rope = RotaryEmbedding(config.head_dim, config.max_position, config.rope_theta, config.rope_scaling)
        self.scale = config.head_dim**-0.5

    @torch.inference_mode()
    def forward(self, batch: Batch, kv: KVPool) -> torch.Tensor:
        """Runs the decoder over the batch's new tokens, writing their K/V. Returns [T, hidden]."""
        cfg, w = self.config, self.weights
        T = batch.input_ids.shape[0]
        plan = self.backend.plan(batch.attn)  # once per step, used by every layer
        cos, sin = self.rope.lookup(batch.attn.positions, self.dtype)  # [T, 1, head_dim]
        h = w.embed[batch.input_ids]  # [T, hidden]
        for i, lw in enumerate(w.layers):
            x = rms_norm(h, lw.input_norm, cfg.rms_norm_eps)
            qkv = linear(x, lw.qkv, lw.qkv_bias)
            # rotary on q and k together: [T, heads + kv_heads, head_dim]
            qk = apply_rotary(qkv[:, : cfg.q_size + cfg.kv_size].view(T, -1, cfg.head_dim), cos, sin)
            q, k = qk.split([cfg.num_heads, cfg.num_kv_heads], dim=1)
            v = qkv[:, cfg.q_size + cfg.kv_size :]
            cache = kv.layers[i]
            self.backend.write_kv(cache, k, v.view(T, cfg.num_kv_heads, cfg.head_dim), plan)
            attn = self.backend.attend(q, cache, plan, self.scale)  # [T, heads, head_dim]
            h = h + linear(attn.reshape(T, cfg.q_size), lw.o)
            x = rms_norm(h, lw.post_norm, cfg.rms_norm_eps)
            h = h + linear(silu_and_mul(linear(x, lw.gate_up)), lw.down)
        return rms_norm(h, w.norm, cfg.rms_norm_eps)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> fp32 logits [N, vocab]."""
        return linear(hidden, self.weights.lm_head).float()

    def run(self, batch: Batch, kv: KVPool) -> torch.Tensor:
        """forward + logits for the rows the batch asks for: [N, vocab]."""
        hidden = self.forward(batch, kv)
        return self.compute_logits(hidden[batch.logits_indices])
