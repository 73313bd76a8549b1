"""Rotary position embeddings with the scalings a config can name (default, linear, llama3, yarn).

HF's non-interleaved convention: x * cos + rotate_half(x) * sin, cos/sin = cat(freqs, freqs), with
rotate_half(x) = cat(-x2, x1) written as roll(x, half) times a sin whose first half is negated.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from engine.errors import ModelLoadError


def _yarn_inv_freq(inv_freq: torch.Tensor, base: float, dim: int, s: dict[str, Any], max_pos: int) -> tuple[torch.Tensor, float]:
    factor = float(s["factor"])
    orig = int(s.get("original_max_position_embeddings") or max_pos)
    beta_fast, beta_slow = float(s.get("beta_fast") or 32), float(s.get("beta_slow") or 1)

    def get_mscale(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all = s.get("mscale"), s.get("mscale_all_dim")
        if mscale and mscale_all:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all)
        else:
            attention_factor = get_mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    inv = (inv_freq / factor) * (1 - extrapolation) + inv_freq * extrapolation
    return inv, float(attention_factor)


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    factor = float(s["factor"])
    low_ff, high_ff = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low_ff, old_len / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding:
    """Precomputed cos/sin tables; ``lookup(positions)`` once per step, applied in every layer."""

    def __init__(self, head_dim: int, max_position: int, base: float, scaling: dict[str, Any] | None) -> None:
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        attention_factor = 1.0
        kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
        if kind == "linear":
            inv_freq = inv_freq / float(scaling["factor"])  # type: ignore[index]
        elif kind == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)  # type: ignore[arg-type]
        elif kind == "yarn":
            inv_freq, attention_factor = _yarn_inv_freq(inv_freq, base, head_dim, scaling, max_position)  # type: ignore[arg-type]
        elif kind != "default":
            raise ModelLoadError(f"rope scaling {kind!r} is not supported (default, linear, llama3, yarn)")
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [max_pos, head_dim/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_pos, head_dim]
        self.cos = emb.cos() * attention_factor
        # sin with its first half negated: rotate_half(x) * sin == roll(x, half) * signed_sin
        self.signed_sin = emb.sin() * attention_factor
        self.signed_sin[:, : head_dim // 2].neg_()
        self.max_position = max_position
        # the tables in each (dtype, device) asked for, made once
        self._tables: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] -> cos, signed sin [T, 1, head_dim] (broadcast over heads), for ``apply_rotary_``."""
        device = positions.device
        tables = self._tables.get((dtype, device))
        if tables is None:
            tables = self._tables[(dtype, device)] = (self.cos.to(device, dtype), self.signed_sin.to(device, dtype))
        cos, sin = tables
        return cos.index_select(0, positions)[:, None], sin.index_select(0, positions)[:, None]


def apply_rotary_(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> None:
    """In place, x: [T, heads, head_dim] (may be a strided view). HF's x * cos + rotate_half(x) * sin,
    rounded as HF rounds it."""
    rotated = x.roll(x.shape[-1] // 2, -1).mul_(signed_sin)
    x.mul_(cos).add_(rotated)
