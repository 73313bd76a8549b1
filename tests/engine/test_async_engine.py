"""AsyncEngine: the engine thread steps on its own; asyncio callers add, stream, abort and call in.

Runs the real bundled model (a small KV pool, lookahead off so outputs compare with plain generate).
"""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.async_engine import AsyncEngine
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def llm(model_dir: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, lookahead=False))


def _params(n: int = 12) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


async def _collect(ae: AsyncEngine, rid: str, ids: list[int], n: int = 12) -> list[int]:
    seq = await ae.call(ae.engine.make_sequence, rid, ids, _params(n))
    tokens: list[int] = []
    async for out in ae.run(seq):
        tokens += out.new_tokens
    return tokens


def test_concurrent_requests_equal_plain_generate(llm: LLMEngine) -> None:
    prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    expected = [o.output_ids for o in llm.generate(prompts, _params())]

    async def go() -> list[list[int]]:
        ae = AsyncEngine(llm)
        ae.start()
        try:
            return await asyncio.gather(*(_collect(ae, f"r{i}", p) for i, p in enumerate(prompts)))
        finally:
            await ae.close()

    assert asyncio.run(go()) == expected
    assert llm.allocator.num_free == llm.allocator.num_blocks


def test_leaving_early_aborts_and_frees_blocks(llm: LLMEngine) -> None:
    ids = llm.tokenizer.encode(PROMPTS[2])

    async def go() -> tuple[int, int]:
        ae = AsyncEngine(llm)
        ae.start()
        try:
            seq = await ae.call(llm.make_sequence, "early", ids, _params(200))
            got = 0
            stream = ae.run(seq)
            async for out in stream:
                got += len(out.new_tokens)
                if got >= 3:
                    break
            await stream.aclose()  # what a cancelled RPC does: the abort is queued before the next call
            return got, await ae.call(lambda: llm.allocator.num_free)
        finally:
            await ae.close()

    got, free = asyncio.run(go())
    assert got >= 3
    assert free == llm.allocator.num_blocks, "an abandoned request kept KV blocks"
    assert "early" not in llm.seqs


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(llm: LLMEngine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = llm.step
    failures = {"left": 1}

    def flaky_step() -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("injected step failure")
        return real_step()

    monkeypatch.setattr(llm, "step", flaky_step)
    ids = llm.tokenizer.encode(PROMPTS[0])

    async def go() -> list[int]:
        ae = AsyncEngine(llm)
        ae.start()
        try:
            with pytest.raises(RuntimeError, match="injected step failure"):
                await asyncio.wait_for(_collect(ae, "doomed", ids), timeout=30)
            return await asyncio.wait_for(_collect(ae, "after", ids), timeout=60)
        finally:
            await ae.close()

    after = asyncio.run(go())
    assert after == llm.generate([ids], _params())[0].output_ids
    assert llm.allocator.num_free == llm.allocator.num_blocks


def test_call_returns_results_and_raises_errors(llm: LLMEngine) -> None:
    async def go() -> None:
        ae = AsyncEngine(llm)
        with pytest.raises(RuntimeError, match="before start"):
            await ae.call(lambda: 1)
        ae.start()
        try:
            assert await ae.call(lambda a, b: a + b, 2, 3) == 5
            with pytest.raises(ZeroDivisionError):
                await ae.call(lambda: 1 / 0)
        finally:
            await ae.close()
        assert ae._thread is None

    asyncio.run(go())


def test_create_builds_the_engine_on_the_thread_that_steps_it(llm: LLMEngine, model_dir: Path) -> None:
    """Workers build with ``create``: one thread loads, calibrates and steps (one OpenMP pool in the
    process), the event loop's own parallel regions then run on one thread, and outputs equal
    plain generate."""
    prompt = llm.tokenizer.encode(PROMPTS[1])
    expected = llm.generate([prompt], _params())[0].output_ids
    built_on: list[threading.Thread] = []

    def build() -> LLMEngine:
        built_on.append(threading.current_thread())
        return LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, lookahead=False))

    async def go() -> tuple[threading.Thread, list[int], int]:
        ae = await AsyncEngine.create(build)
        try:
            loop_threads = _gomp().omp_get_max_threads()  # on the event loop's thread, after create
            return await ae.call(threading.current_thread), await _collect(ae, "c0", prompt), loop_threads
        finally:
            await ae.close()

    before = _gomp().omp_get_max_threads()
    try:
        stepped_on, tokens, loop_threads = asyncio.run(go())
    finally:
        _gomp().omp_set_num_threads(before)  # this test's event loop ran on the session's main thread
    assert built_on == [stepped_on] and stepped_on is not threading.main_thread()
    assert tokens == expected
    assert loop_threads == 1


def test_create_raises_what_the_build_raised() -> None:
    def build() -> LLMEngine:
        raise ValueError("no such model")

    async def go() -> None:
        await AsyncEngine.create(build)

    with pytest.raises(ValueError, match="no such model"):
        asyncio.run(go())


def _gomp() -> Any:
    import ctypes

    return ctypes.CDLL("libgomp.so.1")  # torch's, already loaded


def test_a_reader_that_lags_gets_each_steps_own_logprobs(model_dir: Path) -> None:
    """The engine thread steps on while its reader lags (a decode worker's stream under load, as
    in make test): each output carries its own tokens' logprobs and lookahead totals. The decode
    worker used to read ``seq.logprobs[-n:]`` when it got an output, by then the next steps'
    entries: a chat's top logprobs came out one position ahead of their tokens."""
    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, lookahead=True))
    ids = eng.tokenizer.encode("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,")
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, logprobs=2)

    async def go() -> tuple[Any, list[Any], int]:
        ae = AsyncEngine(eng)
        ae.start()
        try:
            seq = await ae.call(eng.make_sequence, "lagging", ids, params)
            outs, got, ahead = [], 0, 0
            async for out in ae.run(seq):
                got += len(out.new_tokens)
                # the reader lags: it reads on once the engine has stepped past this output (a
                # fixed sleep was shorter than a step under make test's load)
                deadline = time.monotonic() + 60
                while len(seq.logprobs) <= got and not seq.finished and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                ahead = max(ahead, len(seq.logprobs) - got)
                outs.append(out)
            return seq, outs, ahead
        finally:
            await ae.close()

    seq, outs, ahead = asyncio.run(go())
    assert ahead > 0, "the engine never ran ahead of its reader: the test proves nothing"
    tokens = [t for out in outs for t in out.token_outs()]
    assert [t.token_id for t in tokens] == seq.output_ids
    assert [(t.logprob, list(t.top_ids), list(t.top_logprobs)) for t in tokens] == seq.logprobs
    assert all(t.top_ids[0] == t.token_id or t.top_logprobs[0] == t.logprob for t in tokens)  # greedy: its row's first
    # each output's totals are its step's: drafts accepted so far all in the tokens out so far
    # (the first came from the prefill), the last output's the sequence's own
    out_so_far = 0
    for out in outs:
        out_so_far += len(out.new_tokens)
        assert out.accepted_tokens <= out_so_far - 1 and out.accepted_tokens <= out.draft_tokens
    assert (outs[-1].draft_tokens, outs[-1].accepted_tokens) == (seq.num_draft_tokens, seq.num_accepted_tokens)
    assert seq.num_accepted_tokens > 0  # lookahead drafted and was taken: the totals were exercised
