"""The LoRA adapters a gateway serves beside its base model, as vLLM serves them: named at start
(``--lora-modules name=path``, or vLLM's JSON form), loaded and unloaded at run time where allowed
(``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``), and chosen by a request's ``model``.

The gateway checks an adapter's config (LoRA, rank) and takes the digest of its files; the workers
load it from the same path on first use (engine.lora.registry), so every process must read it there.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

from engine.errors import InvalidRequestError
from engine.lora.adapter import adapter_digest, read_config
from engine.request import LoraRef
from gateway.errors import ModelNotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What a request's ``model`` names: the id its response gives, and its adapter if any."""

    name: str
    lora: LoraRef | None = None


def parse_lora_modules(values: Sequence[str]) -> list[tuple[str, str]]:
    """vLLM's ``--lora-modules``: each ``name=path`` or ``{"name": ..., "path": ...}`` -> (name, path)."""
    out: list[tuple[str, str]] = []
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                spec = json.loads(value)
                name, path = spec["name"], spec["path"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"--lora-modules {value!r}: the JSON form needs \"name\" and \"path\"") from None
        else:
            name, sep, path = value.partition("=")
            if not sep:
                raise ValueError(f"--lora-modules {value!r}: expected name=path")
        if not name or not path:
            raise ValueError(f"--lora-modules {value!r}: the name and the path must not be empty")
        out.append((str(name), str(path)))
    return out


class LoraModules:
    def __init__(self, base_names: Sequence[str], max_rank: int = 16, runtime_updates: bool = False) -> None:
        self.base_names = tuple(base_names)
        self.max_rank = max_rank
        self.runtime_updates = runtime_updates  # vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING
        self._refs: dict[str, LoraRef] = {}

    def add(self, name: str, path: str) -> LoraRef:
        """Registers an adapter after checking its config (a clear 400 for what cannot be served)."""
        if not name or not path:
            raise InvalidRequestError("lora_name" if not name else "lora_path", "is required")
        if name in self.base_names:
            raise InvalidRequestError("lora_name", f"{name!r} is the base model's name")
        if name in self._refs:
            raise InvalidRequestError("lora_name", f"the LoRA adapter {name!r} has already been loaded")
        read_config(path, self.max_rank)
        ref = LoraRef(name, path, adapter_digest(path))
        self._refs[name] = ref
        logger.info("LoRA adapter %r served from %s", name, path)
        return ref

    def remove(self, name: str) -> None:
        if name not in self._refs:
            raise ModelNotFoundError("lora_name", f"the LoRA adapter {name!r} cannot be found")
        del self._refs[name]
        logger.info("LoRA adapter %r no longer served", name)

    def check_updatable(self) -> None:
        if not self.runtime_updates:
            raise InvalidRequestError("lora_name", "LoRA adapters cannot be loaded or unloaded at run time here: "
                                                   "start the gateway with --allow-runtime-lora-updating (or "
                                                   "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")

    def __iter__(self) -> Iterator[LoraRef]:
        return iter(list(self._refs.values()))

    def resolve(self, model: str | None) -> ServedModel:
        """The model a request names: the base (no name, or one of its names) or an adapter."""
        if model is not None and not isinstance(model, str):
            raise InvalidRequestError("model", "must be a string")
        if not model or model in self.base_names:
            return ServedModel(self.base_names[0])
        ref = self._refs.get(model)
        if ref is None:
            names = [*self.base_names, *self._refs]
            raise ModelNotFoundError("model", f"model {model!r} is not served here (served: {', '.join(map(repr, names))})")
        return ServedModel(model, ref)
