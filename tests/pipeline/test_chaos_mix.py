"""A random mix of requests over both APIs, a quarter of the clients leaving early, against the
real stack (``launcher.chaos``, which also injects faults from the command line): nothing is lost."""
from __future__ import annotations

import asyncio
import random

from launcher.chaos import Probe, make_mix, recheck_greedy, run_mix, unexpected
from launcher.stack import Stack
from launcher.stack_probe import wait_idle


def test_a_random_mix_with_clients_leaving_early_loses_nothing(stack: Stack) -> None:
    # the clients that leave ask for 1,500 tokens: a request not stopped when they leave holds its KV
    # well past the mix, and the idle check below finds it
    # (seed 19: each API among the clients that stay, some with a cache salt or a penalty; seed 16 did
    # too but prefilled twice the prompt tokens, its quotes, and took 43 s to this one's 24)
    probes = make_mix(random.Random(19), 24, grpc_share=0.3, max_tokens=(1, 2, 16, 48), leaving_tokens=1500)
    outcomes = asyncio.run(run_mix(stack.http_url, stack.grpc_address, probes, concurrency=6))
    bad = unexpected(outcomes)
    assert not bad, [(o.probe.api, o.status, o.detail) for o in bad]
    statuses = [o.status for o in outcomes]
    assert statuses.count("200") >= 12 and "left" in statuses, statuses
    served = [o.probe for o in outcomes if o.status == "200"]
    assert {p.api for p in served} >= {"grpc", "/v1/chat/completions", "/v1/completions"}
    assert any(_salted(p) for p in served) and any(_penalised(p) for p in served)
    snapshot = wait_idle(stack)
    assert all(v == (0, 0, 0) for v in snapshot.values()), snapshot  # every KV block and lease given back
    checked, differ = asyncio.run(recheck_greedy(stack.http_url, stack.grpc_address, outcomes))
    assert checked >= 3 and not differ, differ


def _salted(p: Probe) -> bool:
    return bool(p.body.cache_salt if p.api == "grpc" else p.body.get("cache_salt"))


def _penalised(p: Probe) -> bool:
    if p.api == "grpc":
        return p.body.sampling.repetition_penalty not in (0.0, 1.0)
    return any(k in p.body for k in ("repetition_penalty", "frequency_penalty", "presence_penalty"))
