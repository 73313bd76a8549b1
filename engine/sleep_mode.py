"""vLLM's sleep mode for one engine: its memory given back while it serves nothing, taken again
when it wakes, without a restart.

- Level 1: the KV cache is discarded and the weights kept in host memory (on a GPU they move to
  the host; on a CPU they are there already).
- Level 2: the KV cache and the weights are discarded; waking the weights reads them again from
  the directory they were served from (``LLMEngine.weights_dir``: the last one
  engine.weight_update committed).

Waking is by tag (``weights``, ``kv_cache``; both by default), as vLLM's ``wake_up(tags)``: an RL
trainer wakes the weights, puts new ones in, then wakes the KV cache.

The KV pool's memory is given back page by page (``madvise(MADV_DONTNEED)``: the pages return to
the OS and read as zeros when touched again) at the same addresses, so the NIXL registrations of
the pool (KV handoffs, the kvstore) stay valid. Only an idle engine sleeps: no sequence running, no
block held (a handoff's KV waiting for its decode worker, a kvstore write under way), every
cached prefix forgotten. On a GPU the pool stays allocated (its registration with NIXL would go
stale); its weights move or go.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from engine.errors import InvalidRequestError
from engine.model import LayerWeights, ModelWeights
from engine.model_loader import load_model
from engine.weight_update import EngineBusyError

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)
TAGS = ("weights", "kv_cache")
LEVELS = (1, 2)
_MADV_DONTNEED = 4


class SleepMode:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.asleep: set[str] = set()  # the tags given back, not yet woken
        self._host_weights: ModelWeights | None = None  # level 1 on a GPU: the weights moved to the host

    def sleep(self, level: int) -> int:
        """Gives back the engine's KV cache (and at level 2 its weights); the bytes given back.
        EngineBusyError while it serves anything."""
        if level not in LEVELS:
            raise InvalidRequestError("level", f"must be one of {list(LEVELS)}, got {level}")
        eng = self.engine
        if eng.seqs:
            raise EngineBusyError(f"{len(eng.seqs)} requests are running here: pause generation first")
        if eng.prefix_cache is not None:
            eng.prefix_cache.clear()
        if eng.allocator.num_used:
            raise EngineBusyError(f"{eng.allocator.num_used} KV blocks are held here (a handoff or a kvstore write "
                                  "under way): try again once they are done")
        given = 0
        if "kv_cache" not in self.asleep:
            given += _give_back_pages(eng.kv.data)
            self.asleep.add("kv_cache")
        weights = eng.model.weights
        if level == 2:  # (after a level-1 sleep too: what level 1 kept goes now)
            dropped = [w for w in (weights, self._host_weights) if w is not None]
            given += sum(_nbytes(w) for w in dropped)
            eng.model.weights = self._host_weights = None  # type: ignore[assignment]  # never stepped while asleep
            del weights, dropped
            _trim_heap()
        elif weights is not None and eng.model.device.type != "cpu":
            self._host_weights = _mapped(weights, lambda t: t.to("cpu"))
            given += _nbytes(weights)
            eng.model.weights = None  # type: ignore[assignment]
            del weights
            torch.cuda.empty_cache()
        self.asleep.add("weights")
        logger.info("asleep (level %d): %.1f MiB given back", level, given / 2**20)
        return given

    def wake_up(self, tags: Iterable[str] | None = None) -> None:
        """Takes back what ``tags`` name (every tag by default)."""
        wanted = list(tags) if tags else list(TAGS)
        unknown = [t for t in wanted if t not in TAGS]
        if unknown:
            raise InvalidRequestError("tags", f"unknown {unknown}: the tags are {list(TAGS)}")
        eng = self.engine
        if "weights" in wanted and "weights" in self.asleep:
            if self._host_weights is not None:
                eng.model.weights = _mapped(self._host_weights, lambda t: t.to(eng.model.device))
                self._host_weights = None
            elif eng.model.weights is None:  # level 2: read again
                eng.model.weights = load_model(eng.weights_dir, eng.model.backend, dtype=eng.model.dtype,
                                               device=eng.config.device).weights
        # the KV pool's pages come back as they are written (CPU), or never went (GPU)
        self.asleep.difference_update(wanted)
        logger.info("awake: %s%s", wanted, f" ({sorted(self.asleep)} still asleep)" if self.asleep else "")


def _give_back_pages(t: torch.Tensor) -> int:
    """The whole pages of ``t``'s memory returned to the OS (a CPU tensor; 0 elsewhere): the bytes."""
    if t.device.type != "cpu" or not t.numel():
        return 0
    page = os.sysconf("SC_PAGE_SIZE")
    start = -(-t.data_ptr() // page) * page
    end = (t.data_ptr() + t.numel() * t.element_size()) // page * page
    if end <= start:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) != 0:
        logger.warning("madvise failed (errno %d): the KV pool's memory stays taken", ctypes.get_errno())
        return 0
    return end - start


def _trim_heap() -> None:
    """Hands the heap's free memory back to the OS (glibc keeps freed chunks of the weights that
    sat below its mmap threshold)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except AttributeError:  # not glibc
        pass


_LAYER_FIELDS = tuple(f.name for f in dataclasses.fields(LayerWeights))


def _nbytes(w: ModelWeights) -> int:
    """The bytes of ``w``'s tensors (a packed weight's data; a tied LM head once)."""
    held = [w.embed, w.norm, w.lm_head, *(getattr(layer, f) for layer in w.layers for f in _LAYER_FIELDS)]
    tensors = {t.data_ptr(): t for t in (getattr(x, "data", x) for x in held) if isinstance(t, torch.Tensor)}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _mapped(w: ModelWeights, fn: Callable[[torch.Tensor], torch.Tensor]) -> ModelWeights:
    """``w`` with ``fn`` applied to every tensor (plain tensors: the weights a GPU serves)."""
    def m(t: Any) -> Any:
        return fn(t) if isinstance(t, torch.Tensor) else t
    layers = [LayerWeights(**{f: m(getattr(layer, f)) for f in _LAYER_FIELDS}) for layer in w.layers]
    return ModelWeights(embed=m(w.embed), layers=layers, norm=m(w.norm), lm_head=m(w.lm_head))
