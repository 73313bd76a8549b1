"""A LoRA adapter in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``), read
into the model's fused projections.

The decoder fuses q/k/v into one product and gate/up into another (engine.model), so an adapter's
per-module pairs are fused the same way: for a fused projection with sub-modules m1, m2, ...

    A = cat(A_m1, A_m2, ...)                   [sum r_m, in]
    B = block-diagonal(B_m1, B_m2, ...)        [out, sum r_m]  (zero where a module has no adapter)
    scale = scaling_m over each module's rows  [out]

and ``delta(x) = (x @ A.T) @ B.T * scale``: PEFT's ``lora_B(lora_A(x)) * scaling`` per module
(a zero column adds exact zeros). Only the attention and MLP projections take an adapter; what
PEFT can put elsewhere (embeddings, the LM head, DoRA, biases, modules_to_save) is refused by name.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from engine.config import ModelConfig
from engine.errors import InvalidRequestError
from engine.layers import Weight, linear, pack_weight, products_row_invariant

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# the fused projections, each with its sub-modules in the fused weight's row order
FUSED: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
MODULE_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                 "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)(?:\.\w+)?\.weight$")
_REFUSED_CONFIG = {"use_dora": "DoRA", "lora_bias": "LoRA biases", "modules_to_save": "modules_to_save",
                   "fan_in_fan_out": "fan_in_fan_out (GPT-2 style Conv1D weights)", "layer_replication":
                   "layer_replication", "trainable_token_indices": "trainable tokens"}


class LoraError(InvalidRequestError):
    """An adapter that cannot be served on this model (a 400 naming the adapter and why)."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__("lora", f"adapter {str(path)!r}: {message}")


@dataclass(frozen=True, slots=True)
class FusedLora:
    a: Weight  # [sum r, in]
    b: Weight  # [out, sum r]
    # [out] fp32: each sub-module's scaling over its output rows (0 where it has none); applied in
    # fp32 and rounded once, as torch multiplies a 16-bit tensor by PEFT's Python float. None: the
    # scalings are powers of two, folded into b (exact: a power of two commutes with rounding)
    scale: torch.Tensor | None

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, in] -> [n, out], the adapter's addition to the projection of these rows."""
        d = linear(linear(x, self.a), self.b)
        return d if self.scale is None else (d.float() * self.scale).to(d.dtype)


@dataclass(frozen=True, slots=True, eq=False)
class LoraAdapter:
    digest: str  # of the adapter's files (adapter_digest): its KV is keyed by content, not by name
    rank: int  # the largest of its modules' ranks
    layers: tuple[dict[str, FusedLora], ...]  # per layer: fused projection name ("qkv", ...) -> its pair
    # whether a row's delta keeps its bits at every step width (16-bit: checked at load, as the
    # engine checks the base products; lookahead drafts only where it does); fp32: True
    row_invariant: bool = True


def adapter_digest(path: str | Path) -> str:
    """sha256 over the adapter's config and weights (what its KV and cache namespace are keyed by)."""
    folder = Path(path)
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, *WEIGHT_FILES):
        f = folder / name
        if f.is_file():
            digest.update(name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def read_config(path: str | Path, max_rank: int) -> dict[str, Any]:
    """The adapter's PEFT config, checked for what Grove serves (LoRA, rank <= ``max_rank``)."""
    folder = Path(path)
    if not folder.is_dir():
        raise LoraError(path, "no such directory")
    cfg_file = folder / CONFIG_FILE
    if not cfg_file.is_file():
        raise LoraError(path, f"no {CONFIG_FILE} (a PEFT LoRA adapter directory has it)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise LoraError(path, f"{CONFIG_FILE} is not JSON: {e}") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise LoraError(path, f"peft_type {cfg.get('peft_type')!r} is not LoRA")
    for key, what in _REFUSED_CONFIG.items():
        if cfg.get(key):
            raise LoraError(path, f"{what} is not supported")
    if cfg.get("bias", "none") != "none":
        raise LoraError(path, f"bias {cfg['bias']!r} is not supported (only 'none')")
    ranks = [int(cfg.get("r", 8)), *map(int, (cfg.get("rank_pattern") or {}).values())]
    if max(ranks) > max_rank:
        raise LoraError(path, f"rank {max(ranks)} is above the server's --max-lora-rank {max_rank}")
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise LoraError(path, f"no weights ({' or '.join(WEIGHT_FILES)})")
    return cfg


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern: the value of the first key that names the module
    (the whole name or a dotted suffix of it, as a regex)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?(?:{key})$", module):
            return value
    return default


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    st = folder / WEIGHT_FILES[0]
    if st.is_file():
        with safe_open(str(st), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    return torch.load(folder / WEIGHT_FILES[1], map_location="cpu", weights_only=True)


def _read_pairs(folder: Path, config: ModelConfig) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
    """The adapter's weights by (layer, module): {"A": lora_A, "B": lora_B}."""
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in _read_tensors(folder).items():
        m = _KEY.match(key)
        if m is None or m.group(3) not in MODULE_PARENT or MODULE_PARENT[m.group(3)] != m.group(2):
            raise LoraError(folder, f"weight {key!r} is not on an attention or MLP projection "
                                    "(q/k/v/o_proj, gate/up/down_proj), the modules Grove applies LoRA to")
        layer = int(m.group(1))
        if layer >= config.num_layers:
            raise LoraError(folder, f"weight {key!r} names layer {layer}; the model has {config.num_layers}")
        pairs.setdefault((layer, m.group(3)), {})[m.group(4)] = tensor
    if not pairs:
        raise LoraError(folder, "holds no LoRA weights")
    return pairs


def _fuse(parts: list[tuple[int, torch.Tensor | None, torch.Tensor | None, float]], dtype: torch.dtype,
          device: str | torch.device) -> FusedLora | None:
    """One fused projection's pair from its sub-modules' (out, A, B, scaling), in row order; None
    where no sub-module has an adapter."""
    a_parts = [a for _, a, _, _ in parts if a is not None]
    if not a_parts:
        return None
    a_cat = torch.cat(a_parts)  # [sum r, in]
    scale = torch.cat([torch.full((out,), scaling) for out, _, _, scaling in parts])  # [out]
    fold = all(math.frexp(s)[0] == 0.5 for s in scale.unique().tolist() if s)
    b_cat = torch.zeros(scale.shape[0], a_cat.shape[0])  # block-diagonal
    row, col = 0, 0
    for out, _, b, _ in parts:
        if b is not None:
            b_cat[row:row + out, col:col + b.shape[1]] = b.float()
            col += b.shape[1]
        row += out
    if fold:
        b_cat.mul_(scale[:, None])
    return FusedLora(pack_weight(a_cat.to(device=device, dtype=dtype).contiguous()),
                     pack_weight(b_cat.to(device=device, dtype=dtype).contiguous()),
                     None if fold else scale.to(device=device))


def load_adapter(path: str | Path, config: ModelConfig, dtype: torch.dtype, device: str | torch.device,
                 max_rank: int) -> LoraAdapter:
    """Reads a PEFT LoRA adapter for a model of ``config`` into fused pairs of ``dtype``."""
    folder = Path(path)
    cfg = read_config(folder, max_rank)
    pairs = _read_pairs(folder, config)
    out_sizes = {"q_proj": config.q_size, "k_proj": config.kv_size, "v_proj": config.kv_size,
                 "o_proj": config.hidden_size, "gate_proj": config.intermediate_size,
                 "up_proj": config.intermediate_size, "down_proj": config.hidden_size}
    in_sizes = {"o_proj": config.q_size, "down_proj": config.intermediate_size}
    alpha, rslora = float(cfg.get("lora_alpha", 8)), bool(cfg.get("use_rslora"))
    layers: list[dict[str, FusedLora]] = []
    rank = 0
    for layer in range(config.num_layers):
        fused: dict[str, FusedLora] = {}
        for name, modules in FUSED.items():
            parts: list[tuple[int, torch.Tensor | None, torch.Tensor | None, float]] = []
            for module in modules:
                pair, out = pairs.get((layer, module)), out_sizes[module]
                if pair is None:
                    parts.append((out, None, None, 0.0))
                    continue
                if set(pair) != {"A", "B"}:
                    raise LoraError(path, f"layer {layer}'s {module} lacks lora_{'B' if 'A' in pair else 'A'}")
                a, b = pair["A"], pair["B"]
                r = a.shape[0]
                if a.shape != (r, in_sizes.get(module, config.hidden_size)) or b.shape != (out, r):
                    raise LoraError(path, f"layer {layer}'s {module} has lora_A {tuple(a.shape)} and lora_B "
                                          f"{tuple(b.shape)}, which do not fit the model's {module}")
                if r > max_rank:
                    raise LoraError(path, f"rank {r} is above the server's --max-lora-rank {max_rank}")
                full_name = f"model.layers.{layer}.{MODULE_PARENT[module]}.{module}"
                m_alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, full_name, alpha))
                parts.append((out, a, b, m_alpha / math.sqrt(r) if rslora else m_alpha / r))
                rank = max(rank, r)
            pair_of = _fuse(parts, dtype, device)
            if pair_of is not None:
                fused[name] = pair_of
        layers.append(fused)
    invariant = True
    if dtype != torch.float32:  # its products checked as the engine checks the base model's
        first = next(f for f in layers if f)
        invariant = products_row_invariant([w for pair in first.values() for w in (pair.a, pair.b)])
    return LoraAdapter(adapter_digest(folder), rank, tuple(layers), row_invariant=invariant)
