"""The in-process decode timer the engine benchmarks share, on the real bundled model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.inprocess import decode_batch, decode_interleaved, decode_stream
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

TEXTS = ("def add(a, b):", "The capital of France is", "1, 2, 3,")


def test_decode_batch_times_only_what_follows_each_first_token(engine: Any, tokenizer: Any) -> None:
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    d = decode_batch(engine, prompts, params, "inprocess-test")
    assert [len(o) for o in d.outputs] == [6, 6, 6]
    assert d.tokens == 3 * 5  # the first token of each comes with its prefill, untimed
    assert 1 <= d.steps <= 5 and d.seconds > 0 and d.tokens_per_second == d.tokens / d.seconds
    alone = decode_batch(engine, prompts[1:2], params, "inprocess-alone")
    assert alone.outputs == [d.outputs[1]]  # batched or alone, greedy gives the same tokens
    assert not engine.has_work and engine.allocator.num_used == 0


def test_two_engines_taking_turns_each_time_their_own_steps(engine: Any, tokenizer: Any, model_dir: Path) -> None:
    """decode_interleaved: the shared engine (lookahead on) and one without lookahead decode the same
    batch at once; each gets its own outputs, tokens and step count, as decode_batch gives it alone."""
    off = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, lookahead=False))
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    got_on, got_off = decode_interleaved([engine, off], prompts, params, "interleaved")
    alone_off = decode_batch(off, prompts, params, "interleaved-alone")
    assert got_on.outputs == got_off.outputs == alone_off.outputs  # lossless, and taking turns changes nothing
    assert got_on.tokens == got_off.tokens == 3 * 11
    assert got_off.steps == alone_off.steps == 11 and 1 <= got_on.steps <= 11
    assert got_off.seq_steps == 3 * 11 and 3 <= got_on.seq_steps <= 3 * got_on.steps  # a token a sequence-step off
    assert got_on.seconds > 0 and got_off.seconds > 0
    assert not engine.has_work and not off.has_work and off.allocator.num_used == 0


def test_tokens_decoded_beside_another_prefill_count_alike_for_both_engines(tokenizer: Any, model_dir: Path) -> None:
    """Prefills in chunks of 16 tokens: the short prompt decodes in the untimed steps beside the
    long one's chunks, and the drafting engine (every draft as wide as it goes: FreeWideSteps)
    takes more there. Each engine counts every token after each sequence's first, so both count
    the same tokens for their equal outputs; batch_seconds holds the prefill steps too."""
    from engine.lookahead.budget import FreeWideSteps

    def make(lookahead: bool) -> LLMEngine:
        return LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, lookahead=lookahead,
                                      max_num_batched_tokens=16))

    on, off = make(True), make(False)
    on.speculator.cost = FreeWideSteps()  # type: ignore[union-attr]
    long = tokenizer("Count with me, one number a line, and do not stop before one hundred: " * 3)["input_ids"]
    prompts = [tokenizer("1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4,")["input_ids"], long]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    got_on, got_off = decode_interleaved([on, off], prompts, params, "chunked")
    assert got_on.outputs == got_off.outputs
    assert got_on.tokens == got_off.tokens == 2 * 15
    assert got_on.batch_seconds > got_on.seconds > 0 and got_off.batch_seconds > got_off.seconds > 0
    assert not on.has_work and on.allocator.num_used == 0 and off.allocator.num_used == 0


def test_a_stream_keeps_the_concurrency_and_gives_every_output(engine: Any, tokenizer: Any) -> None:
    """decode_stream: 3 prompts, 2 in flight; every output as the batch gives it, in prompt order."""
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    in_flight: list[int] = []
    step = engine.step

    def counting_step() -> Any:
        in_flight.append(len(engine.scheduler.running) + len(engine.scheduler.waiting))
        return step()

    engine.step = counting_step
    try:
        d = decode_stream(engine, prompts, params, 2, "stream")
    finally:
        del engine.step
    assert d.outputs == decode_batch(engine, prompts, params, "stream-batch").outputs
    assert d.tokens == 3 * 5 and max(in_flight) == 2 and d.steps == len(in_flight)
    assert not engine.has_work and engine.allocator.num_used == 0
