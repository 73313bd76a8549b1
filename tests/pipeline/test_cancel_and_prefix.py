"""Prefix reuse through the kvstore, and cancellation that frees blocks in every process."""
from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

from launcher.stack import Stack
from tests.pipeline.stack_probe import wait_idle


def test_shared_1000_token_prefix_is_reused_and_gives_the_same_text(stack: Stack, tokenizer: Any) -> None:
    rng = random.Random(11)
    prefix = [rng.randrange(1000, 30000) for _ in range(1000)]
    first = prefix + [rng.randrange(1000, 30000) for _ in range(20)]
    second = prefix + [rng.randrange(1000, 30000) for _ in range(20)]
    url = stack.http_url + "/v1/completions"

    def ask(ids: list[int]) -> dict:
        r = httpx.post(url, json={"prompt": ids, "max_tokens": 8, "temperature": 0, "return_token_ids": True}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    a = ask(first)
    assert a["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    b = ask(second)
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] >= 992
    # the same text as computed cold: the engine alone, with no cache, is the reference
    from engine.engine_config import EngineConfig  # the engine alone, no cache, as the reference
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    alone = LLMEngine(EngineConfig(num_kv_blocks=80, num_threads=2)).generate([second], SamplingParams(temperature=0, max_tokens=8))[0]
    assert alone.output_ids == b["choices"][0]["token_ids"]


def test_cancelling_50_streams_midway_frees_every_block(stack: Stack) -> None:
    wait_idle(stack)

    async def one(client: httpx.AsyncClient, i: int) -> int:
        got = 0
        async with client.stream("POST", "/v1/completions", json={
            "prompt": f"Story number {i}: once upon a time", "max_tokens": 200, "temperature": 0, "stream": True,
            "ignore_eos": True}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    got += 1
                    if got >= 3:
                        break  # leaving the block closes the connection: a client cancel
        return got

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.http_url, timeout=300) as c:
            return await asyncio.gather(*(one(c, i) for i in range(50)))

    counts = asyncio.run(run())
    assert all(n >= 3 for n in counts)
    snap = wait_idle(stack, timeout_s=30)
    assert all(v == (0, 0, 0) for v in snap.values()), snap
