"""Prefill routing by prefix affinity and load, on the workers' own block-hash chain."""
from __future__ import annotations

import asyncio

from gateway.router import Router


def test_affinity_follows_a_prompts_prefix_and_its_cache_salt() -> None:
    """A prompt goes back to the worker that computed it while that worker is not much busier; the
    same prompt under a cache salt has no such worker (the workers' caches hold it apart) until a
    salted request of that salt computed it."""
    async def main() -> None:
        router = Router(["127.0.0.1:1", "127.0.0.1:2"], [], block_size=16, affinity_slack=2)
        w0, w1 = router.prefill
        w0.healthy = w1.healthy = True
        prompt = list(range(100, 164))  # 4 full blocks

        w0.in_flight = 1
        assert router.choose_prefill(prompt) is w1  # by load
        w0.in_flight = 0
        assert router.choose_prefill(prompt) is w1  # by affinity, though w0 is as idle
        assert router.choose_prefill(prompt[:40] + [7] * 30) is w1  # shares 2 full blocks
        assert router.choose_prefill(prompt, cache_salt="tenant") is w0  # no salted prefix known: by load
        w0.in_flight = 2
        assert router.choose_prefill(prompt, cache_salt="tenant") is w0  # its salt's prefix: within the slack
        w0.in_flight = 3
        assert router.choose_prefill(prompt, cache_salt="tenant") is w1  # too busy: load wins
        assert router.decisions == {"prefix_affinity": 3, "load": 3}
        await router.close()

    asyncio.run(main())
