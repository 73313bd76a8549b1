"""A served model's default sampling parameters, as vLLM takes them: from the checkpoint's
generation_config.json (``--generation-config auto``), another folder's, or none (``vllm``), with
``--override-generation-config`` on top. A request's own fields win over a default; the defaults'
``max_tokens`` (Hugging Face's ``max_new_tokens``) also caps what a request asks for."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from engine.errors import InvalidRequestError
from engine.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

# Hugging Face's generation_config keys that vLLM takes as sampling defaults -> Grove's names
_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
         "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}
_FLOATS = ("temperature", "top_p", "min_p", "repetition_penalty")


def _read(folder: Path) -> dict[str, Any]:
    path = folder / "generation_config.json"
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: must hold a JSON object")
    return config


def load_generation_defaults(model_dir: str | Path, source: str = "auto",
                             override: str | Mapping[str, Any] = "") -> dict[str, Any]:
    """Sampling defaults by Grove's field names (``max_tokens`` for ``max_new_tokens``).
    ``source``: "auto" (the model's generation_config.json), "vllm" (none: the API's own
    defaults) or a folder holding a generation_config.json; ``override``: a JSON object (text or a
    mapping) of Hugging Face's keys laid over them. Raises ValueError, naming the key, for a
    default no request could have."""
    if source == "vllm":
        config: dict[str, Any] = {}
    elif source == "auto":
        config = _read(Path(model_dir))
    else:
        folder = Path(source)
        if not (folder / "generation_config.json").is_file():
            raise ValueError(f"--generation-config {source!r}: no generation_config.json there "
                             "(give 'auto', 'vllm' or a folder that holds one)")
        config = _read(folder)
    if isinstance(override, str):
        try:
            override = json.loads(override) if override.strip() else {}
        except ValueError as e:
            raise ValueError(f"--override-generation-config: not JSON ({e})") from None
    if not isinstance(override, Mapping):
        raise ValueError("--override-generation-config: must be a JSON object")
    config = {**config, **override}
    defaults = {ours: config[theirs] for theirs, ours in _KEYS.items() if config.get(theirs) is not None}
    for key, value in defaults.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (key not in _FLOATS and not isinstance(value, int)):
            raise ValueError(f"generation config: {key} must be {'a number' if key in _FLOATS else 'an integer'}, "
                             f"got {value!r}")
        defaults[key] = float(value) if key in _FLOATS else value
    try:
        SamplingParams(**defaults)
    except (InvalidRequestError, TypeError) as e:
        raise ValueError(f"generation config: {e}") from None
    if defaults:
        logger.warning("default sampling parameters from the generation config: %s (requests' own fields win; "
                       "--generation-config vllm turns them off)", defaults)
    return defaults


API_MAX_TOKENS = SamplingParams().max_tokens  # a completion's output limit when none is given (OpenAI's 16)


def with_defaults(given: dict[str, Any], defaults: Mapping[str, Any], api_max_tokens: int = API_MAX_TOKENS) -> dict[str, Any]:
    """The keyword arguments of a request's SamplingParams: ``given`` (the fields the request set)
    over ``defaults``. The output limit is the request's, else ``api_max_tokens`` (the API's own
    default), and never more than the defaults' ``max_tokens``, as in vLLM."""
    kwargs = {**{k: v for k, v in defaults.items() if k != "max_tokens"}, **given}
    limit = kwargs.get("max_tokens", api_max_tokens)
    cap = defaults.get("max_tokens")
    kwargs["max_tokens"] = limit if cap is None or not isinstance(limit, int) else min(limit, cap)
    return kwargs
