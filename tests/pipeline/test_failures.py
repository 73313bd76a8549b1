"""Dead workers give clear errors within seconds, or the request is served by another worker."""
from __future__ import annotations

import json
import os
import re
import random
import signal
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from launcher.stack import Stack, StackConfig
from tests.pipeline.stack_probe import worker_stats


@pytest.fixture(scope="module")
def fragile_stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of this module's own: its tests freeze and kill its processes, in file order (a
    stack starts in ~30-50 s on 2 cores, so they share one): the kvstore, then prefill-0 (frozen,
    then killed, which leaves prefill-1 serving), then decode-0, the only decode worker (frozen and
    woken, then killed). Each test also passes alone on a fresh stack."""
    config = StackConfig(model=str(model_dir), num_prefill=2, num_decode=1, worker_kv_gb=0.25,
                         log_dir=str(tmp_path_factory.mktemp("fragile-stack")), threads_per_worker=1)
    with Stack(config) as s:
        yield s


def test_a_dead_or_frozen_kvstore_costs_the_cache_not_the_request(fragile_stack: Stack) -> None:
    """The kvstore is a cache: stopped (SIGSTOP: calls to it hang) or killed, prompts it would have
    served are computed instead, within seconds, and give the same text."""
    s = fragile_stack
    rng = random.Random(21)
    url = s.http_url + "/v1/completions"

    def ask(prompt: list[int]) -> tuple[list[int], float]:
        t0 = time.monotonic()
        r = httpx.post(url, json={"prompt": prompt, "max_tokens": 4, "temperature": 0, "return_token_ids": True},
                       timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["token_ids"], time.monotonic() - t0

    prompts = [[rng.randrange(1000, 30000) for _ in range(200)] for _ in range(4)]
    want = [ask(p)[0] for p in prompts]
    kvstore = s.service("kvstore").proc.pid
    os.kill(kvstore, signal.SIGSTOP)
    try:
        for p in prompts[:2]:  # another prefill worker than the one that computed it would ask the kvstore
            got, took = ask(p[:150] + [7] * 10 + p[160:])
            assert len(got) == 4
            assert took < 10.0, f"a frozen kvstore held a request {took:.1f} s"
    finally:
        os.kill(kvstore, signal.SIGCONT)
    assert sum(w.kvstore_failures for name, w in worker_stats(s).items() if name.startswith("prefill")) >= 1
    os.kill(kvstore, signal.SIGKILL)
    for p, w in zip(prompts, want):
        got, took = ask(p)
        assert got == w and took < 10.0, (took, got, w)


def test_a_frozen_prefill_worker_costs_seconds_then_the_other_serves(fragile_stack: Stack) -> None:
    """A prefill worker that stops answering (SIGSTOP: its sockets stay open) is found out by the
    channel's keepalive within seconds, not by a call's timeout: every request is served."""
    s = fragile_stack
    url = s.http_url + "/v1/completions"
    body = {"prompt": "The capital of Spain is", "max_tokens": 4, "temperature": 0, "return_token_ids": True}
    before = httpx.post(url, json=body, timeout=60).json()["choices"][0]["token_ids"]
    pid = s.service("prefill-0").proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            t0 = time.monotonic()
            r = httpx.post(url, json=body, timeout=60)
            took = time.monotonic() - t0
            assert r.status_code == 200 and r.json()["choices"][0]["token_ids"] == before, r.text
            assert took < 10.0, f"a frozen prefill worker held a request {took:.1f} s"
    finally:
        os.kill(pid, signal.SIGCONT)


def test_killing_a_prefill_worker_reroutes_to_the_other(fragile_stack: Stack) -> None:
    s = fragile_stack
    url = s.http_url + "/v1/completions"
    body = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "return_token_ids": True}
    before = httpx.post(url, json=body, timeout=60).json()
    os.kill(s.service("prefill-0").proc.pid, signal.SIGKILL)
    for _ in range(4):  # whichever prefill worker the router picks, every request is served
        r = httpx.post(url, json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["token_ids"] == before["choices"][0]["token_ids"]


def test_a_frozen_decode_worker_ends_its_streams_within_seconds(fragile_stack: Stack) -> None:
    """The only decode worker stops answering mid-stream (SIGSTOP): the stream ends with an error
    within seconds, not never; woken again, it serves the next request."""
    s = fragile_stack
    pid = s.service("decode-0").proc.pid
    body = {"prompt": "Count slowly: one, two, three,", "max_tokens": 400, "temperature": 0, "stream": True,
            "ignore_eos": True}
    try:
        with httpx.Client(base_url=s.http_url, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                for seen, line in enumerate(x for x in lines if x.startswith("data: {")):
                    if seen == 2:
                        break
                os.kill(pid, signal.SIGSTOP)
                t0 = time.monotonic()
                tail = [line for line in lines if line.startswith("data: ")]
                elapsed = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert elapsed < 10.0, f"client waited {elapsed:.1f} s"
    assert "error" in json.loads(tail[-1][6:]), tail[-3:]
    deadline = time.monotonic() + 20  # the gateway's health checks find it answering again
    while True:
        r = httpx.post(s.http_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=30)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text


def test_killing_decode_mid_stream_errors_within_5s_then_prefill_failover(fragile_stack: Stack) -> None:
    s = fragile_stack
    body = {"prompt": "Count slowly: one, two, three,", "max_tokens": 400, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.Client(base_url=s.http_url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            seen = 0
            for line in lines:
                if line.startswith("data: {"):
                    seen += 1
                    if seen == 3:
                        break
            os.kill(s.service("decode-0").proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            tail = [line for line in lines if line.startswith("data: ")]
            elapsed = time.monotonic() - t0
    assert elapsed < 5.0, f"client waited {elapsed:.1f} s"
    assert "error" in json.loads(tail[-1][6:]), tail[-3:]
    # no decode worker left: a new request fails fast with 503 naming the cause
    t0 = time.monotonic()
    r = httpx.post(s.http_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=30)
    assert r.status_code == 503 and "decode" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 5.0


def test_kv_a_decode_worker_cannot_get_is_prefilled_again_elsewhere(model_dir: Path, tmp_path: Path) -> None:
    """prefill-0 hands out KV no decode worker can reach (it advertises an address nothing listens
    on, as behind a network partition): the decode worker reports the KV lost, not itself broken;
    the gateway prefills the prompt again on prefill-1 and the client gets the whole answer, the
    same as from a sound stack."""
    config = StackConfig(model=str(model_dir), num_prefill=2, num_decode=1, worker_kv_gb=0.25, log_dir=str(tmp_path),
                         threads_per_worker=1, prefill_args=(("--advertise", "127.0.0.1:9"),))
    body = {"prompt": "The three primary colours are", "max_tokens": 8, "temperature": 0, "return_token_ids": True}
    with Stack(config) as s:
        for stream in (False, True):
            r = httpx.post(s.http_url + "/v1/completions", json={**body, "stream": stream}, timeout=120)
            assert r.status_code == 200, r.text
            if stream:
                chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
                assert not any("error" in c for c in chunks), chunks
                ids = [t for c in chunks for t in c["choices"][0].get("token_ids") or []]
            else:
                ids = r.json()["choices"][0]["token_ids"]
            assert ids == want_ids(model_dir, body)
        m = httpx.get(s.http_url + "/metrics", timeout=10).text
        assert re.search(r'grove:router_retries_total\{[^}]*code="FAILED_PRECONDITION"[^}]*\} 2\.0', m), m
        health = httpx.get(s.http_url + "/health", timeout=10)
        assert health.status_code == 200  # the decode worker was not blamed


def want_ids(model_dir: Path, body: dict) -> list[int]:
    from engine.engine_config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from engine.tokenizer import load_tokenizer

    ids = load_tokenizer(model_dir)(body["prompt"])["input_ids"]
    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=32, num_threads=1))
    return eng.generate([ids], SamplingParams(temperature=0.0, max_tokens=body["max_tokens"]))[0].output_ids
