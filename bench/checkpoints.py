"""Checkpoints for weight updates (the tests, scripts/bench_weight_update.py): the bundled model
with other weights, as a training step leaves them (config, tokenizer and safetensors in a
directory of their own)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def retrained_checkpoint(model_dir: Path, dest: Path, seed: int = 0, scale: float = 0.2) -> Path:
    """``model_dir``'s model with its norms' weights each scaled by a random factor in [1 - scale,
    1 + scale] (every layer's K and V change, and the logits; the answers stay text), in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dest / f.name)
    g = torch.Generator().manual_seed(seed)
    for f in model_dir.glob("*.safetensors"):
        tensors = load_file(str(f))
        for name in sorted(n for n in tensors if n.endswith("norm.weight")):
            w = tensors[name]
            tensors[name] = w * (1 + scale * (2 * torch.rand(w.shape, generator=g) - 1)).to(w.dtype)
        save_file(tensors, str(dest / f.name), metadata={"format": "pt"})
    return dest


def other_architecture(model_dir: Path, dest: Path) -> Path:
    """A directory whose config names one layer fewer than ``model_dir``'s (weights not copied:
    the config is checked first)."""
    dest.mkdir(parents=True, exist_ok=True)
    config = json.loads((model_dir / "config.json").read_text())
    config["num_hidden_layers"] -= 1
    (dest / "config.json").write_text(json.dumps(config))
    return dest
