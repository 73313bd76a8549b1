"""Load a local Hugging Face model directory (config.json + safetensors) into Grove's model code."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from engine.attention.base import AttentionBackend
from engine.config import ModelConfig
from engine.errors import ModelLoadError
from engine.layers import pack_weight
from engine.model import LayerWeights, Model, ModelWeights

logger = logging.getLogger(__name__)


def _safetensor_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors in {model_dir}")
    return files


def model_fingerprint(model_dir: str | Path) -> str:
    """A cheap content id for KV namespacing: config, tensor headers and sampled weight bytes."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in _safetensor_files(model_dir):
        size = f.stat().st_size
        digest.update(str(size).encode())
        with open(f, "rb") as fh:
            step = max(size // 64, 1)  # 64 samples of 64 KiB spread over the file (header included)
            for off in range(0, size, step):
                fh.seek(off)
                digest.update(fh.read(1 << 16))
    return digest.hexdigest()[:24]


def _load_tensors(model_dir: Path, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in _safetensor_files(model_dir):
        with safe_open(str(f), framework="pt", device="cpu") as fh:
            for name in fh.keys():
                tensors[name] = fh.get_tensor(name).to(device=device, dtype=dtype)
    return tensors


def load_model(
    model_dir: str | Path,
    backend: AttentionBackend,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
) -> Model:
    model_dir = Path(model_dir)
    config = ModelConfig.from_dir(model_dir)
    dtype = dtype or getattr(torch, config.torch_dtype, torch.float32)
    raw = _load_tensors(model_dir, dtype, device)

    def take(name: str) -> torch.Tensor:
        try:
            return raw.pop(name)
        except KeyError:
            raise ModelLoadError(f"weight {name!r} missing in {model_dir}") from None

    layers = []
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        qkv = torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        bias = None
        if config.attention_bias:
            bias = torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        layers.append(
            LayerWeights(
                input_norm=take(p + "input_layernorm.weight"),
                qkv=pack_weight(qkv.contiguous()),
                qkv_bias=bias,
                o=pack_weight(take(p + "self_attn.o_proj.weight")),
                post_norm=take(p + "post_attention_layernorm.weight"),
                gate_up=pack_weight(torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])),
                down=pack_weight(take(p + "mlp.down_proj.weight")),
            )
        )
    embed = take("model.embed_tokens.weight")
    lm_head = raw.pop("lm_head.weight", None)
    if lm_head is None or config.tie_word_embeddings:
        if lm_head is None and not config.tie_word_embeddings:
            raise ModelLoadError("lm_head.weight missing and embeddings are not tied")
        lm_head = embed
    # a packed LM head is a copy even when tied: the embedding keeps its rows for lookups
    weights = ModelWeights(embed=embed, layers=layers, norm=take("model.norm.weight"), lm_head=pack_weight(lm_head))
    leftover = [k for k in raw if "rotary_emb" not in k]
    if leftover:
        logger.warning("ignored %d unexpected weights, e.g. %s", len(leftover), leftover[:3])
    logger.info("loaded %s (%s, %d layers, %s)", model_dir, config.model_type, config.num_layers, dtype)
    return Model(config, weights, backend)
