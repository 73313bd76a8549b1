"""Random schedules through one engine (launcher.engine_fuzz): tight pools, drafts as wide as they
may be, priorities, shared prefixes, aborts, greedy and seeded sampling, stops, penalties, bans,
grammars, logprobs, resumed and salted requests, twins; every output equals the request's output alone."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kernels import cpu_linear
from launcher.engine_fuzz import FP32_LOGPROB_TOL, EngineFuzz, Outcome

# round 3000 is where the fuzz first caught a victim of a lower priority kept in its step after its
# blocks were freed (the step raised); 40003 where a request's top logprobs listed equal values in
# another order than alone (topk's order of equals changed with the top-n its step asked for). Salts
# and twins (session 36) changed the rounds' schedules: 40003 no longer meets that tie, nor did 15
# minutes of the seeds after it with the bug put back; tests/engine/test_sampling.py checks the order.
# The two rounds (~40 and ~50 s alone on one thread, AVX2 EPYC) exceed every count asserted below by half or more
# (3002, dropped for make test's time, added 4 requests and 39 accepted drafts; `python -m
# launcher.engine_fuzz` runs as many rounds as asked).
SEEDS = (3000, 40003)


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


def test_fp32_outcomes_compare_logprobs_within_rounding_and_the_rest_exactly() -> None:
    """fp32's forward rounds a row by what shares its step (engine_fuzz's doc): its logprobs may be
    ~1e-5 from alone, and nothing else may differ."""
    alone = Outcome([5, 7], "length", "ab", [(-0.9196187, [261], [-0.9196187]), (-2.0, [], [])],
                    [(-3.5, 2, [9], [-1.25])])
    rounded = Outcome([5, 7], "length", "ab", [(-0.9196180, [261], [-0.9196180]), (-2.0, [], [])],
                      [(-3.500004, 2, [9], [-1.25])])
    assert rounded.differences(alone, FP32_LOGPROB_TOL) == []
    assert [d.split(" ")[0] for d in rounded.differences(alone)] == ["logprobs", "prompt_logprobs"]  # bf16: bits
    for other in (dataclasses.replace(rounded, output_ids=[5, 8]),
                  dataclasses.replace(rounded, logprobs=[(-0.9196180, [262], [-0.9196180]), (-2.0, [], [])]),
                  dataclasses.replace(rounded, logprobs=[(-0.92, [261], [-0.92]), (-2.0, [], [])]),
                  dataclasses.replace(rounded, logprobs=rounded.logprobs[:1]),
                  dataclasses.replace(rounded, prompt_logprobs=[(-3.5, 3, [9], [-1.25])])):
        assert len(other.differences(alone, FP32_LOGPROB_TOL)) == 1, other
