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
from engine.layers import Weight, linear, linear_residual, norm_linear, rms_norm, silu_and_mul
from engine.lora.batch import LoraBatch
from engine.rope import RotaryEmbedding


@dataclass(slots=True)
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv: Weight  # [q_size + 2 * kv_size, hidden]
    qkv_bias: torch.Tensor | None  # [q_size + 2 * kv_size] (qwen2)
    o: Weight  # [hidden, q_size]
    post_norm: torch.Tensor  # [hidden]
    gate_up: Weight  # [2 * intermediate, hidden]
    down: Weight  # [hidden, intermediate]


@dataclass(slots=True)
class ModelWeights:
    embed: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: torch.Tensor  # [hidden]
    lm_head: Weight  # [vocab, hidden] (the embedding itself when tied, unless packed)


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
        cfg, w, backend, scale = self.config, self.weights, self.backend, self.scale
        T = batch.input_ids.shape[0]
        H, KVH, D, eps = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps
        plan = backend.plan(batch.attn)  # once per step, used by every layer
        cos, sin = self.rope.lookup(batch.attn.positions, self.dtype)  # [T, 1, head_dim]
        h = w.embed.index_select(0, batch.input_ids)  # [T, hidden]: the residual stream, updated in place
        lora = batch.lora
        for i, (lw, cache) in enumerate(zip(w.layers, kv.layers)):
            qkv = _normed(h, lw.input_norm, eps, lw.qkv, lw.qkv_bias, lora, i, "qkv")
            q = backend.rope_write_kv(qkv.view(T, H + 2 * KVH, D), cos, sin, cache, plan, H)  # [T, heads, head_dim]
            attn = backend.attend(q, cache, plan, scale)  # [T, heads, head_dim]
            h = _residual(attn.reshape(T, cfg.q_size), lw.o, h, lora, i, "o")
            gate_up = _normed(h, lw.post_norm, eps, lw.gate_up, None, lora, i, "gate_up")
            h = _residual(silu_and_mul(gate_up), lw.down, h, lora, i, "down")
        return rms_norm(h, w.norm, eps)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> fp32 logits [N, vocab]."""
        return linear(hidden, self.weights.lm_head).float()

    def run_pooled(self, batch: Batch, kv: KVPool) -> tuple[torch.Tensor, torch.Tensor]:
        """run's logits, and every row's final hidden state [T, hidden] (pooling requests read theirs)."""
        hidden = self.forward(batch, kv)
        return self.compute_logits(hidden.index_select(0, batch.logits_indices)), hidden

    def run(self, batch: Batch, kv: KVPool) -> torch.Tensor:
        """forward + logits for the rows the batch asks for: [N, vocab]."""
        hidden = self.forward(batch, kv)
        if batch.logits_indices.shape[0] != hidden.shape[0]:  # equal counts: every row, in order
            hidden = hidden.index_select(0, batch.logits_indices)
        return self.compute_logits(hidden)


# A step with LoRA rows takes the unfused forms of the fused products below (the norm, then the
# product; the product, then the residual add), which give the same bits where the fused ones are
# Grove's kernels (bf16: kernels.cpu_linear computes them so), so base rows keep theirs.

def _normed(h: torch.Tensor, norm: torch.Tensor, eps: float, weight: Weight, bias: torch.Tensor | None,
            lora: LoraBatch | None, layer: int, projection: str) -> torch.Tensor:
    """linear(rms_norm(h)) [T, out], plus the adapters' deltas of the normed rows on their rows."""
    if lora is None:
        return norm_linear(h, norm, eps, weight, bias)
    x = rms_norm(h, norm, eps)
    return lora.add(linear(x, weight, bias), x, layer, projection)


def _residual(x: torch.Tensor, weight: Weight, h: torch.Tensor, lora: LoraBatch | None, layer: int,
              projection: str) -> torch.Tensor:
    """h += x @ weight.t() (in place), plus the adapters' deltas on their rows: HF's and PEFT's
    order, ``h + (base(x) + delta(x))``, so a step with adapters adds each projection whole."""
    if lora is None:
        return linear_residual(x, weight, h)
    return h.add_(lora.add(linear(x, weight), x, layer, projection))
