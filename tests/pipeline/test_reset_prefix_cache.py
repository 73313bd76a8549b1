"""vLLM's ``POST /reset_prefix_cache`` on a gateway in development mode, in front of the stack's
workers: every worker and the kvstore forget what they cached (a prompt seen before computes whole
again, to the same answer), a request running through the reset finishes as it would have, and a
gateway not in development mode does not serve it."""
from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import grpc
import httpx

from engine.request import WorkRequest
from engine.sampling_params import SamplingParams
from grove.internal.v1 import worker_pb2 as wpb
from grove.internal.v1 import worker_pb2_grpc as wpb_grpc

from launcher.stack import Stack
from launcher.stack_probe import kvstore_stats, wait_idle, worker_stats
from protocol.pipeline import work_to_pb
from tests.pipeline.gateway_process import Gateway

PROMPT = "Here is the manual of the lighthouse, chapter by chapter. " * 30


def _complete(url: str, **body: Any) -> dict[str, Any]:
    r = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0, **body},
                   timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _prefill(stack: Stack, worker: str, ids: list[int]) -> int:
    """A prefill of ``ids`` on one named worker (its first token only): the prompt tokens it found cached."""
    work = WorkRequest(f"reset-{worker}-{random.random()}", tuple(ids), SamplingParams(temperature=0.0, max_tokens=1),
                       seed=1)
    with grpc.insecure_channel(stack.address(worker)) as ch:
        return wpb_grpc.PrefillWorkerStub(ch).Prefill(wpb.PrefillRequest(request=work_to_pb(work)), timeout=120).cached_tokens


def test_a_reset_forgets_every_cached_prefix_and_spares_running_requests(stack: Stack, tmp_path: Path) -> None:
    assert httpx.post(stack.http_url + "/reset_prefix_cache", timeout=10).status_code == 404  # not in dev mode
    gw = Gateway(stack, tmp_path, "--server-dev-mode")
    r = httpx.post(gw.http_url + "/sleep", timeout=10)  # development mode without sleep mode (vLLM's flag)
    assert r.status_code == 400 and "--enable-sleep-mode" in r.text, r.text
    prefills = sorted(name for name in worker_stats(stack) if name.startswith("prefill"))
    rng = random.Random(5)
    # a prompt of each prefill worker's own, 20 blocks (each written back to the kvstore too)
    ids = {name: [rng.randrange(1000, 30000) for _ in range(320)] for name in prefills}
    try:
        first = _complete(gw.http_url)
        for name in prefills:  # each worker's own cache holds its prompt
            _prefill(stack, name, ids[name])
            assert _prefill(stack, name, ids[name]) >= 304
        wait_idle(stack)
        assert sum(t.cached_blocks for t in kvstore_stats(stack).tiers) > 0
        r = httpx.post(gw.http_url + "/reset_prefix_cache", timeout=60)
        assert r.status_code == 200, r.text
        reset = r.json()
        assert len(reset["workers"]) == len(worker_stats(stack))  # every prefill and decode worker
        assert all(reset["workers"][stack.address(name)]["blocks"] >= 20 for name in prefills), reset
        assert reset["kvstore_blocks"] > 0
        assert sum(t.cached_blocks for t in kvstore_stats(stack).tiers) == 0
        # neither the worker's own cache nor the kvstore has its prompt (each then writes its own back:
        # the other's is another prompt)
        assert [_prefill(stack, name, ids[name]) for name in prefills] == [0] * len(prefills)
        wait_idle(stack)
        again = _complete(gw.http_url)
        assert again["choices"][0]["text"] == first["choices"][0]["text"]
        wait_idle(stack)

        # a request decoding through a reset: it keeps its KV and finishes as plain decoding does
        want = _complete(gw.http_url, prompt="Count: one, two,", max_tokens=200, ignore_eos=True)["choices"][0]["text"]

        async def through_a_reset() -> str:
            async with httpx.AsyncClient(base_url=gw.http_url, timeout=120) as client:
                text, reset_done = [], False
                async with client.stream("POST", "/v1/completions", json={
                        "prompt": "Count: one, two,", "max_tokens": 200, "ignore_eos": True, "temperature": 0,
                        "stream": True}) as s:
                    async for line in s.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        text.append(json.loads(line[6:])["choices"][0]["text"])
                        if len(text) == 5 and not reset_done:
                            assert (await client.post("/reset_prefix_cache")).status_code == 200
                            reset_done = True
                assert reset_done
                return "".join(text)

        assert asyncio.run(through_a_reset()) == want
        snap = wait_idle(stack)
        assert all(v == (0, 0, 0) for v in snap.values()), snap
    finally:
        gw.stop()
