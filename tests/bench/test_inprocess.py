"""The in-process decode timer the engine benchmarks share, on the real bundled model."""
from __future__ import annotations

from typing import Any

from bench.inprocess import decode_batch
from engine.sampling_params import SamplingParams


def test_decode_batch_times_only_what_follows_each_first_token(engine: Any, tokenizer: Any) -> None:
    prompts = [tokenizer(t)["input_ids"] for t in ("def add(a, b):", "The capital of France is", "1, 2, 3,")]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    d = decode_batch(engine, prompts, params, "inprocess-test")
    assert [len(o) for o in d.outputs] == [6, 6, 6]
    assert d.tokens == 3 * 5  # the first token of each comes with its prefill, untimed
    assert 1 <= d.steps <= 5 and d.seconds > 0 and d.tokens_per_second == d.tokens / d.seconds
    alone = decode_batch(engine, prompts[1:2], params, "inprocess-alone")
    assert alone.outputs == [d.outputs[1]]  # batched or alone, greedy gives the same tokens
    assert not engine.has_work and engine.allocator.num_used == 0
