"""Random schedules through one engine (launcher.engine_fuzz): tight pools, drafts as wide as they
may be, priorities, shared prefixes, aborts, greedy and seeded sampling, stops, penalties, bans,
grammars, logprobs, resumed and salted requests, twins; every output equals the request's output alone."""
from __future__ import annotations

from pathlib import Path

import pytest

from kernels import cpu_linear
from launcher.engine_fuzz import EngineFuzz

# round 3000 is where the fuzz first caught a victim of a lower priority kept in its step after its
# blocks were freed (the step raised); 40003 where a request's top logprobs listed equal values in
# another order than alone (topk's order of equals changed with the top-n its step asked for). Salts
# and twins (session 36) changed the rounds' schedules: 40003 no longer meets that tie, nor did 15
# minutes of the seeds after it with the bug put back; tests/engine/test_sampling.py checks the order.
SEEDS = (3000, 3002, 40003)


@pytest.mark.skipif(not cpu_linear.available(), reason="needs bf16 products by Grove's kernel (row-invariant)")
def test_random_schedules_give_every_request_its_output_alone(model_dir: Path) -> None:
    fuzz = EngineFuzz(str(model_dir))
    results = [fuzz.round(seed) for seed in SEEDS]
    assert [f for r in results for f in r.failures] == []
    # the rounds must have exercised what they check
    assert sum(r.preemptions for r in results) >= 10
    assert sum(r.accepted_drafts for r in results) >= 100
    assert sum(r.aborted for r in results) >= 1
    assert sum(r.sampled for r in results) >= 3
    assert sum(r.shaped for r in results) >= 5 and sum(r.resumed for r in results) >= 3
    assert sum(r.salted for r in results) >= 3 and sum(r.twins for r in results) >= 2
