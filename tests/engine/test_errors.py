"""Bad input to the engine raises typed errors that say what was wrong."""
from __future__ import annotations

from typing import Any

import pytest

from engine.errors import InvalidRequestError
from engine.sampling_params import SamplingParams


def test_empty_prompt(engine: Any) -> None:
    with pytest.raises(InvalidRequestError, match="prompt: must not be empty"):
        engine.add_request("e1", [], SamplingParams())


def test_prompt_past_context_length(engine: Any) -> None:
    with pytest.raises(InvalidRequestError, match="context length is 8192") as e:
        engine.add_request("e2", [1] * 9000, SamplingParams())
    assert e.value.field == "prompt"


def test_token_out_of_vocab(engine: Any) -> None:
    with pytest.raises(InvalidRequestError, match="token id 49152 is outside the vocabulary"):
        engine.add_request("e3", [1, 2, 49152], SamplingParams())
    with pytest.raises(InvalidRequestError, match="token id -1"):
        engine.add_request("e3", [-1], SamplingParams())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_k": -3}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"logprobs": 99}, "logprobs"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_bad_sampling_params(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidRequestError) as e:
        SamplingParams(**kwargs)
    assert e.value.field == field
    assert field in str(e.value)


def test_engine_still_serves_after_errors(engine: Any) -> None:
    out = engine.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    assert len(out[0].output_ids) == 2


def test_a_pool_smaller_than_the_context_caps_it(model_dir: Any) -> None:
    """A prompt the whole KV pool cannot hold is refused at once (it would wait for blocks forever);
    sequences in a pool too small for all of them at once each reach the cap, preempting in turn."""
    import random

    from engine.engine_config import EngineConfig
    from engine.llm_engine import LLMEngine

    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=6, num_threads=1, lookahead=False))
    assert eng.max_model_len == 6 * 16
    with pytest.raises(InvalidRequestError, match="context length is 96") as e:
        eng.add_request("too-long", list(range(1000, 1100)), SamplingParams())
    assert e.value.field == "prompt"
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 2000) for _ in range(rng.randrange(20, 80))] for _ in range(4)]
    outs = eng.generate(prompts, SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    assert [len(p) + len(o.output_ids) for p, o in zip(prompts, outs)] == [96] * 4
    assert all(o.finish_reason == "length" for o in outs) and eng.allocator.num_used == 0
    assert eng.scheduler.num_preemptions > 0
