"""The gateway's drain timeout ends a request with UnavailableError wherever its stream stands.

The real core (the bundled model's tokenizer, a router with no workers, metrics) with the
request's chunk source replaced by a stream of chunks that never finishes: what is under test is
where ``drain`` stops a request, not the workers (tests/pipeline/test_gateway_drain.py runs the
whole stack through SIGTERM).
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from engine.request import GenerationChunk
from engine.sampling_params import SamplingParams
from gateway.core import GatewayConfig, GatewayCore
from gateway.errors import UnavailableError
from gateway.metrics import GatewayMetrics
from gateway.router import Router


@pytest.fixture
def core(model_dir: Path) -> GatewayCore:
    router = Router([], [], block_size=16)
    return GatewayCore(GatewayConfig(str(model_dir), "m", 2048), router, GatewayMetrics("m", "gateway-drain", router))


def _endless(closed: list[bool], gap_s: float):
    """A chunk source: a chunk every ``gap_s`` seconds, forever; ``closed`` records its cleanup."""
    async def chunks(work: Any, trace: Any, room: Any) -> AsyncIterator[GenerationChunk]:
        try:
            while True:
                await asyncio.sleep(gap_s)
                yield GenerationChunk(text="x")
        finally:
            closed.append(True)
    return chunks


async def _consume(core: GatewayCore, send_s: float) -> tuple[int, BaseException | None]:
    """A server streaming the request: each chunk takes ``send_s`` seconds to send."""
    got, error = 0, None
    try:
        async for _ in core.generate(core.work([1, 2, 3], SamplingParams(max_tokens=10))):
            got += 1
            await asyncio.sleep(send_s)  # the server's write: a cancel landing here is the server's, not ours
    except UnavailableError as e:
        error = e
    return got, error


@pytest.mark.parametrize("where", ["sending", "waiting"])
def test_a_drain_timeout_ends_the_stream_with_an_error_wherever_it_stands(core: GatewayCore, where: str) -> None:
    """``sending``: the drain times out while the server sends a chunk. The server's write is not
    cancelled (gRPC's own code then ended the call with 'Cancelling all calls' instead of the
    error); the request ends with the error when it asks for its next chunk. ``waiting``: it waits
    for the next chunk (from the workers) and is cancelled there, with the same error. Either way
    the chunk source is closed (its worker calls end) and nothing is left in flight."""
    closed: list[bool] = []
    gap, send = (0.01, 0.5) if where == "sending" else (5.0, 0.0)
    core._generate = _endless(closed, gap)  # type: ignore[method-assign]

    async def run() -> tuple[int, BaseException | None]:
        consumer = asyncio.create_task(_consume(core, send))
        await asyncio.sleep(0.2)  # sending: the first chunk is being sent; waiting: the first is awaited
        await core.admission.drain(0.05)
        return await asyncio.wait_for(consumer, 5)

    got, error = asyncio.run(run())
    assert isinstance(error, UnavailableError) and "drain timeout" in str(error), error
    assert got == (1 if where == "sending" else 0)
    assert closed == [True] and core.admission.in_flight == 0
