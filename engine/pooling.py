"""Pooling a prompt's final hidden states into one vector: the embeddings API (vLLM's pooling runner).

A pooling request runs its prompt through the same forward as any other (chunked, batched with
generating requests) and samples nothing: its ``Pooler`` takes the final-norm hidden states of its
rows as the chunks compute them, and gives the vector once the prompt is done.

    last  the last token's state (decoder embedding models: e5-mistral, gte-Qwen2; vLLM's default)
    mean  the mean over every prompt token
    cls   the first token's state

``last`` can start from a cached prefix (only its last token must be computed); ``mean`` and ``cls``
read rows a cached prefix would skip, so their prompts are computed whole.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.errors import InvalidRequestError

POOLING_TYPES = ("last", "mean", "cls")


@dataclass(frozen=True, slots=True)
class PoolingParams:
    pooling: str = "last"
    normalize: bool = True  # L2-normalised (cosine similarity is then a dot product)

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_TYPES:
            raise InvalidRequestError("pooling", f"must be one of {', '.join(POOLING_TYPES)}, got {self.pooling!r}")

    @property
    def reads_every_row(self) -> bool:
        """Whether rows of a cached prefix would be missed (its prompt is then computed whole)."""
        return self.pooling != "last"


def model_pooling(model_dir: str | Path) -> PoolingParams:
    """The model's own pooling, where its folder says it as sentence-transformers does (modules.json:
    a Pooling module's config, a Normalize module), else vLLM's default for a decoder: the last
    token, normalised."""
    folder = Path(model_dir)
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return PoolingParams()
    kinds = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    normalize = "Normalize" in kinds
    try:
        cfg = json.loads((folder / kinds["Pooling"].get("path", "") / "config.json").read_text())
    except (KeyError, OSError, ValueError):
        return PoolingParams("last", normalize)
    for key, kind in (("pooling_mode_lasttoken", "last"), ("pooling_mode_mean_tokens", "mean"),
                      ("pooling_mode_cls_token", "cls")):
        if cfg.get(key):
            return PoolingParams(kind, normalize)
    return PoolingParams("last", normalize)


def pooling_from_config(text: str, default: PoolingParams) -> PoolingParams:
    """vLLM's ``--pooler-config`` (JSON: ``pooling_type`` LAST, MEAN or CLS; ``normalize``) over
    ``default``."""
    cfg: Any = json.loads(text)
    if not isinstance(cfg, dict) or set(cfg) - {"pooling_type", "normalize"}:
        raise ValueError(f"--pooler-config takes pooling_type and normalize, got {text}")
    kind = str(cfg.get("pooling_type", default.pooling)).lower()
    return PoolingParams(kind, bool(cfg.get("normalize", default.normalize)))


@dataclass(slots=True)
class Pooler:
    params: PoolingParams
    num_prompt: int
    _acc: torch.Tensor | None = field(default=None, repr=False)  # fp32 [hidden]: the sum, or the row kept

    def add(self, hidden: torch.Tensor, start: int) -> None:
        """The final hidden states [n, hidden] of prompt positions start .. start + n - 1 (a chunk).
        A chunk from position 0 starts over (a preempted request computes its prompt again)."""
        n = hidden.shape[0]
        if start == 0:
            self._acc = None
        kind = self.params.pooling
        if kind == "mean":
            part = hidden.float().sum(0)
            self._acc = part if self._acc is None else self._acc + part
        elif kind == "cls" and start == 0:
            self._acc = hidden[0].float().clone()
        elif kind == "last" and start + n >= self.num_prompt:
            self._acc = hidden[self.num_prompt - 1 - start].float().clone()

    def result(self) -> list[float]:
        """The pooled vector, once every prompt row was added."""
        assert self._acc is not None, "pooled before the prompt was computed"
        v = self._acc / self.num_prompt if self.params.pooling == "mean" else self._acc
        if self.params.normalize:
            v = torch.nn.functional.normalize(v, dim=0)
        return v.tolist()
