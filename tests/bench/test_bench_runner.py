"""The load generator over real HTTP, against the echo server (fast, deterministic token source)."""
from __future__ import annotations

import asyncio
import math

import pytest

from bench.arrivals import arrival_times
from bench.client import OpenAIHTTPBackend, make_backend
from bench.config import LoadSpec
from bench.datasets import load_prompts
from bench.jobs import select_jobs
from bench.runner import run_load


def _jobs(tokenizer, dataset: str = "humaneval", n: int = 9, max_tokens: int = 5):
    return select_jobs(load_prompts(dataset), tokenizer, num=n, warmup=0, max_tokens=max_tokens,
                       max_prompt_tokens=4096, seed=0).jobs


async def _run(url: str, jobs, load: LoadSpec, **kw):
    backend = OpenAIHTTPBackend(url, name="echo")
    await backend.start()
    try:
        return await run_load(backend, jobs, load, **kw)
    finally:
        await backend.aclose()


def test_closed_loop_keeps_concurrency_and_streams_tokens(echo, tokenizer) -> None:
    url, source = echo
    jobs = _jobs(tokenizer)
    out = asyncio.run(_run(url, jobs, LoadSpec(concurrency=3)))
    assert len(out.records) == 9 and all(r.ok for r in out.records)
    assert out.max_in_flight == 3 and 2 <= source.max_in_flight <= 3  # the server saw the overlap, never more
    for r in out.records:
        job = jobs[r.job_index]
        assert r.text == tokenizer.decode(list(job.prompt_ids[:5]))  # the echo of the sent token ids
        assert r.usage.completion_tokens == 5 and r.usage.cached_tokens is None  # echo reports no details
        assert r.send_time < r.chunk_times[0] <= r.chunk_times[-1] <= r.end_time
        assert len(r.chunk_times) == 5


def test_open_loop_follows_the_arrival_schedule(echo, tokenizer) -> None:
    url, _ = echo
    jobs = _jobs(tokenizer, n=8)
    out = asyncio.run(_run(url, jobs, LoadSpec(concurrency=None, request_rate=10.0, burstiness=0.5), seed=5))
    planned = arrival_times(8, 10.0, 0.5, seed=5)
    sent = sorted(r.send_time - out.start for r in out.records)
    lags = [s - p for s, p in zip(sent, planned)]
    assert all(lag > -0.002 for lag in lags), lags  # never early
    assert sorted(lags)[len(lags) // 2] < 0.15, lags  # and on time (2 shared cores: the median, loosely)


def test_open_loop_cap_limits_requests_in_flight(echo, tokenizer) -> None:
    url, source = echo
    out = asyncio.run(_run(url, _jobs(tokenizer, n=6), LoadSpec(concurrency=2, request_rate=math.inf)))
    assert len(out.records) == 6 and out.max_in_flight == 2 and source.max_in_flight <= 2


def test_duration_cycles_prompts_until_the_deadline(echo, tokenizer) -> None:
    url, _ = echo
    jobs = _jobs(tokenizer, n=3, max_tokens=3)  # ~30 ms each
    out = asyncio.run(_run(url, jobs, LoadSpec(concurrency=2), duration_s=1.0))
    indices = sorted(r.job_index for r in out.records)
    # past the prompts' first pass (make test's load has left room for only 6 in 0.6 s), unique indices
    assert len(indices) > len(jobs) and indices == list(range(len(indices)))
    assert max(r.send_time for r in out.records) - out.start < 1.0


def test_session_turns_wait_for_the_previous_turn(echo, tokenizer) -> None:
    url, _ = echo
    jobs = _jobs(tokenizer, dataset="multiturn", n=10, max_tokens=4)
    assert any(j.after is not None for j in jobs)
    out = asyncio.run(_run(url, jobs, LoadSpec(concurrency=4)))
    records = {r.job_index: r for r in out.records}
    for j in jobs:
        if j.after is not None:
            assert records[j.index].send_time >= records[j.after].end_time


def test_failures_are_recorded_not_raised(echo, tokenizer) -> None:
    url, _ = echo
    jobs = _jobs(tokenizer, n=2)
    out = asyncio.run(_run(url + "/nowhere", jobs, LoadSpec(concurrency=2)))
    assert [r.error[:8] for r in out.records] == ["HTTP 404"] * 2
    out = asyncio.run(_run("http://127.0.0.1:9", jobs, LoadSpec(concurrency=1)))  # nothing listens on port 9
    assert all(r.error and "Connect" in r.error for r in out.records)


def test_backend_choice_by_url() -> None:
    assert isinstance(make_backend("http://localhost:1"), OpenAIHTTPBackend)
    from bench.grpc_client import GroveGRPCBackend

    assert isinstance(make_backend("grpc://localhost:1"), GroveGRPCBackend)
    with pytest.raises(ValueError):
        make_backend("ftp://localhost:1")
