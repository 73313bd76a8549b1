"""New weights and sleep mode on one engine (engine.weight_update, engine.sleep_mode): what is
refused while the engine serves, what a commit changes (the weights, the KV namespace, the prefix
cache), and that waking from either level answers as before. The stack runs them in
tests/pipeline/test_rl_endpoints.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.checkpoints import other_architecture, retrained_checkpoint
from engine import weight_update
from engine.engine_config import EngineConfig
from engine.errors import InvalidRequestError
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.sleep_mode import SleepMode
from engine.weight_update import EngineBusyError

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, lookahead=False))


def _answer(eng: LLMEngine, ids: list[int]) -> list[int]:
    return eng.generate([ids], GREEDY)[0].output_ids


def test_a_commit_serves_the_checkpoint_and_forgets_the_old_weights_kv(engine: LLMEngine, model_dir: Path,
                                                                        tokenizer: Any, tmp_path: Path) -> None:
    ids = tokenizer("The lighthouse keeper wrote in his log every night, and the log said")["input_ids"]
    before, old_id = _answer(engine, ids), engine.layout.model_id
    assert engine.prefix_cache is not None and len(engine.prefix_cache) > 0  # the prompt's blocks
    for bad, why in (("relative", "absolute path"), (str(tmp_path / "absent"), "absolute path"),
                     (str(other_architecture(model_dir, tmp_path / "other")), "num_layers")):
        with pytest.raises(InvalidRequestError, match=why):
            weight_update.load(engine, bad)
    new_dir = retrained_checkpoint(model_dir, tmp_path / "new")
    loaded = weight_update.load(engine, str(new_dir))
    assert _answer(engine, ids) == before  # loaded, not yet served
    seq = engine.add_request("running", ids, GREEDY)
    engine.step()
    with pytest.raises(EngineBusyError, match="pause generation first"):
        weight_update.commit(engine, loaded)
    engine.abort(seq.request_id)
    engine.step()
    assert weight_update.commit(engine, loaded) == engine.layout.model_id != old_id
    assert engine.kv.layout == engine.layout and engine.weights_dir == str(new_dir)
    assert len(engine.prefix_cache) == 0  # the old weights' prefixes were forgotten at the commit
    fresh = LLMEngine(EngineConfig(model=str(new_dir), num_kv_blocks=64, lookahead=False))
    want = _answer(fresh, ids)
    assert want != before and _answer(engine, ids) == want
    assert fresh.layout == engine.layout  # the same KV namespace as an engine started on the checkpoint
    weight_update.commit(engine, weight_update.load(engine, str(model_dir)))
    assert engine.layout.model_id == old_id and _answer(engine, ids) == before


@pytest.mark.parametrize("levels", [(1,), (2,), (1, 2)])
def test_an_idle_engine_sleeps_and_wakes_to_the_same_answers(engine: LLMEngine, tokenizer: Any,
                                                             levels: tuple[int, ...]) -> None:
    ids = tokenizer("Count the ships in the harbour: one, two,")["input_ids"]
    before = _answer(engine, ids)
    mode = SleepMode(engine)
    held = engine.allocator.allocate(1)  # a handoff's KV not yet taken
    with pytest.raises(EngineBusyError, match="KV blocks are held"):
        mode.sleep(levels[0])
    engine.allocator.free(held)
    with pytest.raises(InvalidRequestError):
        mode.sleep(3)
    assert mode.sleep(levels[0]) >= engine.kv.nbytes // 2  # the pool's pages (and at level 2 the weights)
    if levels[1:]:  # deeper: level 2 after level 1 gives back the weights level 1 kept
        assert mode.sleep(levels[1]) > 100 * 2**20
    assert mode.asleep == {"kv_cache", "weights"}
    assert (engine.model.weights is None) == (levels[-1] == 2)
    with pytest.raises(InvalidRequestError, match="unknown"):
        mode.wake_up(["gpu"])
    mode.wake_up(["weights"])
    assert mode.asleep == {"kv_cache"} and engine.model.weights is not None
    mode.wake_up()
    assert not mode.asleep and _answer(engine, ids) == before
