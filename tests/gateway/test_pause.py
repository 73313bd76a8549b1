"""The gateway's pause (vLLM's ``/pause`` and ``/resume``): where it stops a request and what the
client gets. The real core with the request's chunk source replaced by a stream that never ends
(as tests/gateway/test_drain.py does); tests/pipeline/test_rl_endpoints.py runs it over the stack."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from engine.request import GenerationChunk, TokenOut
from engine.sampling_params import SamplingParams
from gateway.core import GatewayConfig, GatewayCore
from gateway.metrics import GatewayMetrics
from gateway.router import Router


@pytest.fixture
def core(model_dir: Path) -> GatewayCore:
    router = Router([], [], block_size=16)
    return GatewayCore(GatewayConfig(str(model_dir), "m", 2048), router, GatewayMetrics("m", "gateway-pause", router))


def _source(closed: list[bool], gap_s: float, length: int | None = None):
    """A chunk source: a token every ``gap_s`` seconds, ``length`` of them (forever: None), the
    last with finish reason "length"; ``closed`` records its cleanup."""
    async def chunks(work: Any, trace: Any, room: Any) -> AsyncIterator[GenerationChunk]:
        try:
            n = 0
            while length is None or n < length:
                await asyncio.sleep(gap_s)
                n += 1
                yield GenerationChunk("x", [TokenOut(7)], "length" if n == length else None)
        finally:
            closed.append(True)
    return chunks


async def _consume(core: GatewayCore) -> list[GenerationChunk]:
    return [c async for c in core.generate(core.work([1, 2, 3], SamplingParams(max_tokens=10)))]


@pytest.mark.parametrize("gap_s", [0.05, 5.0])
def test_abort_ends_the_stream_with_what_it_had(core: GatewayCore, gap_s: float) -> None:
    """Between two chunks or waiting for one: the stream's last chunk says "abort", its usage
    counts the tokens the client has, the source is closed (the worker calls end), and the pause
    answers once nothing is in flight."""
    closed: list[bool] = []
    core._generate = _source(closed, gap_s)  # type: ignore[method-assign]

    async def run() -> list[GenerationChunk]:
        consumer = asyncio.create_task(_consume(core))
        await asyncio.sleep(0.33)
        await asyncio.wait_for(core.admission.pause("abort"), 5)
        assert core.admission.in_flight == 0 and consumer.done()
        return await consumer

    chunks = asyncio.run(run())
    sent = chunks[:-1]
    assert len(sent) == 0 if gap_s > 1 else len(sent) >= 3  # ~6 sent in 0.33 s
    assert chunks[-1].finish_reason == "abort" and chunks[-1].tokens == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(sent)
    assert closed == [True] and core.admission.paused


def test_wait_lets_what_runs_finish_and_holds_what_arrives(core: GatewayCore) -> None:
    closed: list[bool] = []
    core._generate = _source(closed, 0.05, length=8)  # type: ignore[method-assign]

    async def run() -> tuple[list[GenerationChunk], list[GenerationChunk]]:
        running = asyncio.create_task(_consume(core))
        await asyncio.sleep(0.12)
        pause = asyncio.create_task(core.admission.pause("wait"))
        await asyncio.sleep(0.01)
        arriving = asyncio.create_task(_consume(core))  # at a paused door
        await asyncio.wait_for(pause, 5)
        assert running.done() and not arriving.done() and core.admission.in_flight == 0
        await asyncio.sleep(0.5)
        assert not arriving.done()  # still at the door
        core.admission.resume()
        return await running, await asyncio.wait_for(arriving, 5)

    first, second = asyncio.run(run())
    assert [c.finish_reason for c in first][-1] == "length" and len(first) == 8
    assert [c.finish_reason for c in second][-1] == "length" and len(second) == 8
    assert closed == [True, True]


def test_a_resume_ends_a_pause_still_waiting(core: GatewayCore) -> None:
    core._generate = _source([], 0.05)  # type: ignore[method-assign]

    async def run() -> None:
        running = asyncio.create_task(_consume(core))
        await asyncio.sleep(0.12)
        pause = asyncio.create_task(core.admission.pause("wait"))
        await asyncio.sleep(0.2)
        assert not pause.done()  # the request runs forever
        core.admission.resume()
        await asyncio.wait_for(pause, 5)
        assert not core.admission.paused
        running.cancel()

    asyncio.run(run())
