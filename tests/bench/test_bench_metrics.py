"""Metrics are pure functions of records: checked on synthetic records with known answers."""
from __future__ import annotations

import pytest

from bench.config import SLO
from bench.metrics import stats, summarize, tpot_s
from bench.records import RequestRecord, Usage


def rec(i: int, send: float, chunks: list[float], end: float, tokens: int | None = None, usage: Usage | None = None,
        error: str | None = None) -> RequestRecord:
    u = usage if usage is not None else Usage(prompt_tokens=10, completion_tokens=tokens if tokens is not None else len(chunks))
    return RequestRecord(job_index=i, prompt_id=f"p{i}", prompt_tokens=10, send_time=send, end_time=end,
                         chunk_times=chunks, usage=u, error=error)


def test_stats_percentiles_match_linear_interpolation() -> None:
    s = stats(range(1, 101))
    assert s.mean == 50.5 and s.p50 == pytest.approx(50.5) and s.p90 == pytest.approx(90.1)
    assert s.p99 == pytest.approx(99.01) and (s.min, s.max, s.n) == (1, 100, 100)
    assert stats([]) is None


def test_latencies_and_throughput() -> None:
    # A: sent at 0, chunks at 0.5 / 0.7 / 1.0, 3 tokens, ends at 1.0 -> TTFT 500, TPOT (1000-500)/2 = 250
    # B: sent at 1.0, chunks at 1.2 / 2.0 carrying 5 tokens, ends at 2.0 -> TTFT 200, TPOT 800/4 = 200
    a = rec(0, 0.0, [0.5, 0.7, 1.0], 1.0)
    b = rec(1, 1.0, [1.2, 2.0], 2.0, tokens=5)
    m = summarize([a, b])
    assert (m.completed, m.failed, m.duration_s) == (2, 0, 2.0)
    assert m.ttft_ms.p50 == pytest.approx(350) and m.ttft_ms.max == pytest.approx(500)
    assert m.tpot_ms.mean == pytest.approx(225)
    assert sorted(round(x) for x in (m.itl_ms.min, m.itl_ms.max)) == [200, 800] and m.itl_ms.n == 3
    assert m.e2e_ms.mean == pytest.approx(1000)
    assert m.output_tokens == 8 and m.input_tokens == 20
    assert m.request_throughput == pytest.approx(1.0) and m.output_throughput == pytest.approx(4.0)
    assert m.total_token_throughput == pytest.approx(14.0)
    assert m.tokens_per_chunk == pytest.approx(8 / 5)
    assert m.goodput is None and m.slo_attainment is None  # no SLO given


def test_failed_requests_count_but_do_not_measure() -> None:
    ok = rec(0, 0.0, [0.1], 0.2)
    bad = rec(1, 0.0, [], 4.0, error="HTTP 500")
    m = summarize([ok, bad])
    assert (m.completed, m.failed) == (1, 1)
    assert m.duration_s == 4.0 and m.e2e_ms.n == 1 and m.ttft_ms.mean == pytest.approx(100)
    assert m.tpot_ms is None  # one token: TPOT undefined
    assert tpot_s(ok) is None


def test_goodput_under_slo() -> None:
    fast = rec(0, 0.0, [0.1, 0.2], 0.2)  # TTFT 100, TPOT 100
    slow_first = rec(1, 0.0, [0.9, 1.0], 1.0)  # TTFT 900
    slow_decode = rec(2, 0.0, [0.1, 2.0], 2.0)  # TPOT 1900
    failed = rec(3, 0.0, [], 0.1, error="boom")
    records = [fast, slow_first, slow_decode, failed]
    m = summarize(records, SLO(ttft_ms=500, tpot_ms=1000))
    assert m.goodput == pytest.approx(1 / 2.0) and m.slo_attainment == pytest.approx(1 / 4)
    m = summarize(records, SLO(e2e_ms=1500))
    assert m.goodput == pytest.approx(2 / 2.0)


def test_cache_and_lookahead_from_usage() -> None:
    u1 = Usage(prompt_tokens=100, completion_tokens=4, cached_tokens=64, accepted_prediction_tokens=6, rejected_prediction_tokens=2)
    u2 = Usage(prompt_tokens=50, completion_tokens=4, cached_tokens=0, accepted_prediction_tokens=0, rejected_prediction_tokens=4)
    u3 = Usage(prompt_tokens=30, completion_tokens=4)  # a server that reports no details
    m = summarize([rec(0, 0, [1], 1, usage=u1), rec(1, 0, [1], 1, usage=u2), rec(2, 0, [1], 1, usage=u3)])
    assert m.cached_tokens == 64
    assert m.prefix_cache_hit_rate == pytest.approx(64 / 150)  # over the requests that reported it
    assert (m.accepted_prediction_tokens, m.rejected_prediction_tokens) == (6, 6)
    assert m.acceptance_rate == pytest.approx(0.5)
    m = summarize([rec(2, 0, [1], 1, usage=u3)])
    assert m.cached_tokens is None and m.prefix_cache_hit_rate is None and m.acceptance_rate is None


def test_usage_parsing_is_defensive() -> None:
    full = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"accepted_prediction_tokens": 2, "rejected_prediction_tokens": 1}}
    assert Usage.from_openai(full) == Usage(7, 3, 4, 2, 1)
    assert Usage.from_openai({"prompt_tokens": 7, "prompt_tokens_details": None, "completion_tokens_details": {}}) == Usage(7)
    assert Usage.from_openai({"prompt_tokens": "7", "completion_tokens": True}) == Usage()
    assert Usage.from_openai(None) == Usage() and Usage.from_openai([1]) == Usage()
