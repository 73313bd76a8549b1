"""New weights for a running engine, read from disk (vLLM's ``/update_weights`` with its disk
backend; SGLang's ``update_weights_from_disk``): what an RL trainer does between two rollouts.

Two steps, so that a deployment of many workers switches all together or not at all: ``load``
reads the checkpoint beside the weights being served (twice the weights' memory meanwhile) and
checks it is the same architecture; ``commit`` serves it from the next step on, only on an idle
engine (no sequence runs across two sets of weights). The served KV is content-addressed by the
weights (``KVLayout.model_id``, the checkpoint's fingerprint), so after a commit no prefix cache
(this engine's, which is cleared, or the kvstore's) serves KV the old weights computed, and a
decode worker refuses a handoff computed with other weights. The tokenizer stays the one served.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.config import ModelConfig
from engine.errors import GroveError, InvalidRequestError, ModelLoadError
from engine.model import ModelWeights
from engine.model_loader import load_model, model_fingerprint

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)
# what may differ between the served model's config and a new checkpoint's: its stored dtype (the
# engine serves its own)
_MAY_DIFFER = ("torch_dtype",)


class EngineBusyError(GroveError, RuntimeError):
    """The engine has sequences running: weights change only between two requests' lives."""


@dataclass(frozen=True, slots=True)
class LoadedWeights:
    path: str  # the checkpoint's directory
    weights: ModelWeights  # laid out as the served ones (dtype, device, packing)
    model_id: str  # its fingerprint (engine.model_loader.model_fingerprint)


def load(engine: LLMEngine, path: str) -> LoadedWeights:
    """The checkpoint at ``path`` read for ``engine``, not yet served. InvalidRequestError names
    what is wrong with it (not a directory, not loadable, another architecture)."""
    directory = Path(path)
    if not path or not directory.is_absolute() or not directory.is_dir():
        raise InvalidRequestError("path", f"must be an absolute path to a local directory, got {path!r}")
    try:
        config = ModelConfig.from_dir(directory)
        ours = engine.model.config
        for f in dataclasses.fields(ModelConfig):
            theirs, mine = getattr(config, f.name), getattr(ours, f.name)
            if f.name not in _MAY_DIFFER and theirs != mine:
                raise InvalidRequestError("path", f"{path} holds another model: its {f.name} is {theirs!r}, the "
                                                  f"served model's {mine!r}")
        model = load_model(directory, engine.model.backend, dtype=engine.model.dtype, device=engine.config.device)
        model_id = model_fingerprint(directory)
    except InvalidRequestError:
        raise
    except (ModelLoadError, OSError, ValueError) as e:
        raise InvalidRequestError("path", f"{path} could not be loaded: {e}") from None
    logger.info("weights loaded from %s (%s), not yet served", path, model_id)
    return LoadedWeights(str(directory), model.weights, model_id)


def commit(engine: LLMEngine, loaded: LoadedWeights) -> str:
    """Serves ``loaded`` from the next step on: the engine's KV namespace becomes theirs and its
    prefix cache forgets what the old weights computed. EngineBusyError while sequences run.
    Returns the new model id."""
    if engine.seqs:
        raise EngineBusyError(f"{len(engine.seqs)} requests are running here: pause generation first "
                              "(every gateway's /pause), so that none runs across two sets of weights")
    engine.model.weights = loaded.weights
    engine.layout = dataclasses.replace(engine.layout, model_id=loaded.model_id)
    engine.kv.layout = engine.layout
    forgotten = engine.prefix_cache.clear() if engine.prefix_cache is not None else 0
    engine.weights_dir = loaded.path
    logger.info("serving the weights of %s (%s); %d cached blocks forgotten", loaded.path, loaded.model_id, forgotten)
    return loaded.model_id
