"""Where Grove keeps converted models: a cache directory outside the source tree."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
QWEN_MODEL_NAME = "Qwen2.5-Coder-0.5B-Instruct"


def cache_dir() -> Path:
    """Root of Grove's cache (``$GROVE_CACHE`` or ``~/.cache/grove``)."""
    root = os.environ.get("GROVE_CACHE") or os.path.join(Path.home(), ".cache", "grove")
    return Path(root)


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all, its folder made if missing (processes may
    write one cache file side by side, and a reader never sees half of it). Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def converted_model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def package_dir(package: str) -> Path:
    """Directory of an installed package (data packages ship model and dataset files)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed (see requirements-data.txt)")
    return Path(spec.origin).parent


def default_model_dir() -> Path:
    """The bundled SmolLM2 model, converted; ``$GROVE_MODEL`` overrides."""
    override = os.environ.get("GROVE_MODEL")
    return Path(override) if override else converted_model_dir(DEFAULT_MODEL_NAME)
