"""Dead workers give clear errors within seconds, or the request is served by another worker."""
from __future__ import annotations

import asyncio
import json
import os
import re
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import pytest

from gateway.errors import UnavailableError
from engine.lookahead.trie_state import load_trie
from engine.model_loader import model_fingerprint
from engine.request import WorkRequest
from engine.sampling_params import SamplingParams
from gateway.core import GatewayConfig, GatewayCore
from gateway.metrics import GatewayMetrics
from gateway.router import Router
from launcher.stack import Stack, StackConfig
from grove.internal.v1 import worker_pb2 as wpb
from grove.internal.v1 import worker_pb2_grpc as wpb_grpc
from launcher.stack_probe import gateway_retry_counts, kvstore_stats, wait_idle, worker_stat, worker_stats
from protocol.pipeline import work_to_pb
from tests.observability.conftest import scrape, total


DRAIN_S = 120.0


@pytest.fixture(scope="module")
def fragile_stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of this module's own: its tests stop, freeze and kill its processes, in file order
    (a stack starts in ~30-50 s on 2 cores, so they share one): decode-2 is killed mid-stream,
    decode-1 and prefill-2 are shut down (SIGTERM), then the kvstore is frozen and killed (and comes
    back with a snapshot, is shut down and started again from it), then
    prefill-0 (frozen, then killed, which leaves prefill-1 serving), then decode-0, the only decode
    worker left (frozen and woken, then killed). Each test also passes alone on a fresh stack."""
    # drains of up to 120 s: on a slow CPU (an AVX2-only EPYC, six workers on two cores) the long
    # prefills in flight at the prefill worker's SIGTERM took longer than the default 30 s
    logs = tmp_path_factory.mktemp("fragile-stack")
    config = StackConfig(model=str(model_dir), num_prefill=3, num_decode=3, worker_kv_gb=0.25,
                         log_dir=str(logs), threads_per_worker=1, extra_worker_args=("--drain-timeout", str(DRAIN_S)),
                         # each decode worker shut down saves its lookahead trie, a file each
                         extra_decode_args=("--lookahead-state", str(logs / "trie-{worker_id}.npz")))
    with Stack(config) as s:
        yield s


def _drained(s: Stack, name: str, timeout_s: float = DRAIN_S + 10) -> int:
    """Waits for a SIGTERMed worker to exit; returns what it had in flight when the drain began."""
    assert s.service(name).proc.wait(timeout_s) == 0, s.tail(name)
    found = re.findall(r"draining: (\d+) in flight", s.tail(name, 400))
    assert found, s.tail(name)
    return int(found[-1])


def _stream(s: Stack, body: dict[str, object], started: threading.Event | None = None, after: int = 1,
            usage: list[dict] | None = None) -> list[int]:
    """A streamed completion's token ids; ``started`` is set once ``after`` chunks arrived (the
    first is the prefill worker's token, the rest the decode worker's). ``usage``: gets the
    stream's usage appended."""
    ids: list[int] = []
    chunks = 0
    extra = {"stream_options": {"include_usage": True}} if usage is not None else {}
    with httpx.Client(base_url=s.http_url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json={**body, "stream": True, "return_token_ids": True, **extra}) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    if chunk.get("usage") and usage is not None:
                        usage.append(chunk["usage"])
                    if not chunk["choices"]:
                        continue  # the usage chunk
                    ids += chunk["choices"][0].get("token_ids") or []
                    chunks += 1
                    if started is not None and chunks >= after:
                        started.set()
    return ids


def _drafted(s: Stack, name: str) -> float:
    """The lookahead draft tokens a worker has verified (its Prometheus counter)."""
    return total(scrape(f"127.0.0.1:{s.service(name).info['metrics_port']}"), "grove:spec_decode_num_draft_tokens_total")


def test_a_decode_worker_lost_mid_stream_hands_its_streams_to_another(fragile_stack: Stack) -> None:
    """decode-2 dies (SIGKILL) while it streams: each of its requests goes on from the tokens its
    client has, prefilled with them and decoded by another worker, and every stream ends as it
    would have without the loss, token for token: greedy, and sampled with a seed (each position
    draws from the seed, so the resumed draws are the ones the lost worker would have made).
    The usage counts the lookahead drafts of both workers, the lost one's too."""
    s = fragile_stack
    bodies: list[dict[str, object]] = [{"prompt": f"Write about the number {k}.", "max_tokens": 96, "ignore_eos": True,
                                        **({"temperature": 0} if k % 2 else {"temperature": 0.8, "seed": 100 + k})}
                                       for k in range(6)]
    with ThreadPoolExecutor(8) as pool:
        want = list(pool.map(lambda b: _stream(s, b), bodies))
        retries = gateway_retry_counts(s)
        survivors = ("decode-0", "decode-1")
        drafted = sum(_drafted(s, n) for n in survivors)
        lost_drafted = _drafted(s, "decode-2")
        started = [threading.Event() for _ in bodies]
        usage: list[dict] = []
        # two on each decode worker, each killed or not once it is decoding
        running = [pool.submit(_stream, s, b, e, 4, usage) for b, e in zip(bodies, started)]
        assert all(e.wait(60) for e in started)
        assert worker_stats(s)["decode-2"].num_running >= 1
        deadline = time.monotonic() + 10  # the prompts ran before: their outputs are in the tries
        while _drafted(s, "decode-2") == lost_drafted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _drafted(s, "decode-2") > lost_drafted, "decode-2 drafted nothing before it died"
        time.sleep(0.2)  # the step that drafted has sent its tokens
        assert worker_stats(s)["decode-2"].num_running >= 1, "decode-2 finished before it could be killed"
        os.kill(s.service("decode-2").proc.pid, signal.SIGKILL)
        got = [f.result() for f in running]
    assert got == want
    # the usage counts decode-2's drafts too, not only the survivors'
    reported = sum(u["completion_tokens_details"]["accepted_prediction_tokens"]
                   + u["completion_tokens_details"]["rejected_prediction_tokens"] for u in usage)
    assert len(usage) == len(bodies)
    assert reported > sum(_drafted(s, n) for n in survivors) - drafted
    moved = gateway_retry_counts(s)
    assert moved[("decode", "UNAVAILABLE")] > retries[("decode", "UNAVAILABLE")], "no stream was resumed elsewhere"
    resumed = [line for line in httpx.get(s.http_url + "/metrics", timeout=10).text.splitlines()
               if line.startswith("grove:request_migrations_total")]
    assert len(resumed) == 1 and float(resumed[0].rsplit(" ", 1)[1]) >= 1, resumed
    assert moved[("prefill", "FAILED_PRECONDITION")] == retries[("prefill", "FAILED_PRECONDITION")]


def test_a_decode_worker_shut_down_finishes_its_streams_and_takes_no_new_ones(fragile_stack: Stack) -> None:
    """SIGTERM to a decode worker (a rolling restart): the streams it is decoding run to their end,
    with the same tokens as from a worker left alone; requests sent meanwhile are decoded by the
    other decode worker; then it exits 0."""
    s = fragile_stack
    bodies = [{"prompt": f"Tell a story about the number {k}.", "max_tokens": 48, "temperature": 0,
               "ignore_eos": True} for k in range(4)]
    with ThreadPoolExecutor(8) as pool:
        want = list(pool.map(lambda b: _stream(s, b), bodies))
        started = [threading.Event() for _ in bodies]
        # four at once: the router spreads them two and two over the decode workers
        running = [pool.submit(_stream, s, b, e) for b, e in zip(bodies, started)]
        assert all(e.wait(60) for e in started)
        s.service("decode-1").proc.send_signal(signal.SIGTERM)
        during = [pool.submit(_stream, s, b) for b in bodies[:2]]
        assert [f.result() for f in running] == want
        assert [f.result() for f in during] == want[:2]
    assert _drained(s, "decode-1") >= 1  # it had streams of its own to finish
    # its lookahead trie, saved once its streams were done: the next start drafts from what it saw
    trie = load_trie(Path(s.config.log_dir) / "trie-decode-1.npz", model_fingerprint(s.model_dir), 1 << 20)
    assert trie is not None and trie.num_nodes > 100


def test_a_prefill_worker_shut_down_hands_over_the_kv_it_computed(fragile_stack: Stack) -> None:
    """SIGTERM to a prefill worker in the middle of long prefills: they finish, the decode workers
    take their KV from it (no prompt is prefilled twice), new prompts go to the other prefill
    workers, and it exits 0 once its KV is taken. It used to stop answering at once, so its KV was
    never taken and every such prompt was prefilled again (or failed, with no other worker)."""
    s = fragile_stack
    rng = random.Random(5)
    # 640 tokens: seconds of prefill each on a loaded 2-core machine, so prefill-2 has work when it
    # is told to stop (1,200 took ~100 s for the test in all)
    prompts = [[rng.randrange(1000, 30000) for _ in range(640)] for _ in range(6)]

    def ask(prompt: list[int]) -> list[int]:
        r = httpx.post(s.http_url + "/v1/completions", json={"prompt": prompt, "max_tokens": 4, "temperature": 0,
                                                             "return_token_ids": True}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["token_ids"]

    retries = gateway_retry_counts(s)
    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(ask, p) for p in prompts]  # six at once: two on each prefill worker
        # SIGTERM once prefill-2 has a prompt (a fixed wait missed them on a loaded machine: the
        # gateway had sent prefill-2 nothing yet, and the one it sent after the SIGTERM was refused)
        deadline = time.monotonic() + 60
        while (stats := worker_stat(s, "prefill-2")).num_running + stats.num_waiting == 0:
            assert time.monotonic() < deadline, "prefill-2 was sent no prompt"
            time.sleep(0.05)
        s.service("prefill-2").proc.send_signal(signal.SIGTERM)
        got = [f.result() for f in answers]
    assert _drained(s, "prefill-2") >= 1
    again = gateway_retry_counts(s)
    assert again.get(("prefill", "FAILED_PRECONDITION"), 0) == retries.get(("prefill", "FAILED_PRECONDITION"), 0), \
        "a prompt was prefilled again: its KV was lost on the worker shutting down"
    assert all(len(g) == 4 for g in got)
    assert [ask(p) for p in prompts[:2]] == got[:2]  # the same answers from the workers left


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


def test_a_kvstore_restarted_with_its_snapshot_serves_the_prefixes_it_held(fragile_stack: Stack,
                                                                           tmp_path: Path) -> None:
    """The kvstore (dead since the test before) comes back with ``--snapshot``, gets a prompt's
    blocks from a prefill worker, is shut down (SIGTERM: it writes the snapshot) and started again:
    the other prefill worker, which never computed the prompt, reads its prefix from the restarted
    store (its workers reconnect on their own), and the answer is the same."""
    s = fragile_stack
    snapshot = tmp_path / "kv.snapshot"
    port = int(s.address("kvstore").rsplit(":", 1)[1])
    s.start_kvstore(port, snapshot=str(snapshot))
    rng = random.Random(33)
    prompt = [rng.randrange(1000, 30000) for _ in range(320)]  # 20 blocks

    def prefill(worker: str, ids: list[int]) -> int:
        work = WorkRequest(f"snap-{worker}-{rng.random()}", tuple(ids), SamplingParams(temperature=0.0, max_tokens=1),
                           seed=1)
        with grpc.insecure_channel(s.address(worker)) as ch:
            return wpb_grpc.PrefillWorkerStub(ch).Prefill(wpb.PrefillRequest(request=work_to_pb(work)),
                                                          timeout=120).cached_tokens

    deadline = time.monotonic() + 60  # the worker reconnects after its cool-down, then writes back
    while sum(t.cached_blocks for t in kvstore_stats(s).tiers) < 20:
        assert time.monotonic() < deadline, "prefill-0 never wrote its blocks to the new kvstore"
        prefill("prefill-0", prompt + [rng.randrange(1000, 30000)])
        time.sleep(0.5)
    s.service("kvstore").proc.send_signal(signal.SIGTERM)
    assert s.service("kvstore").proc.wait(30) == 0, s.tail("kvstore")
    assert snapshot.exists()
    s.start_kvstore(port, snapshot=str(snapshot))
    assert sum(t.cached_blocks for t in kvstore_stats(s).tiers) >= 20  # loaded at start
    deadline = time.monotonic() + 60
    while (cached := prefill("prefill-1", prompt + [5, 6])) < 320:
        assert time.monotonic() < deadline, f"prefill-1 never read the prefix from the restarted kvstore ({cached})"
        time.sleep(0.5)


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
    want = want_ids(model_dir, body)
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
            assert ids == want
        m = httpx.get(s.http_url + "/metrics", timeout=10).text
        assert re.search(r'grove:router_retries_total\{[^}]*code="FAILED_PRECONDITION"[^}]*\} 2\.0', m), m
        health = httpx.get(s.http_url + "/health", timeout=10)
        assert health.status_code == 200  # the decode worker was not blamed
        # the gateway gave prefill-0 its two unreachable leases back: they are not held for their 30 s
        assert set(wait_idle(s, timeout_s=10).values()) == {(0, 0, 0)}


def want_ids(model_dir: Path, body: dict) -> list[int]:
    from engine.engine_config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from engine.tokenizer import load_tokenizer

    ids = load_tokenizer(model_dir)(body["prompt"])["input_ids"]
    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=32, num_threads=1, lookahead=False))
    return eng.generate([ids], SamplingParams(temperature=0.0, max_tokens=body["max_tokens"]))[0].output_ids


def test_a_decode_worker_gone_since_the_last_health_check_costs_a_retry_not_the_request(stack: Stack) -> None:
    """A gateway whose router still counts a dead decode worker healthy (it died, or began shutting
    down, after the last health check) and picks it first: the call fails before any output, and
    the request is decoded by the other decode worker, from the KV the prefill worker still holds.
    A gateway whose every decode worker is gone says so (503), not "at capacity" (429). The real
    gateway core and router over real channels to the shared stack's workers."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    prompt = "The three primary colors are"
    want = httpx.post(stack.http_url + "/v1/completions", json={"prompt": prompt, "max_tokens": 8, "temperature": 0,
                                                                "return_token_ids": True}, timeout=60)
    want_ids = want.json()["choices"][0]["token_ids"]

    async def run(decode: list[str]) -> tuple[list[int], GatewayCore]:
        router = Router([stack.address("prefill-0")], decode, block_size=16)
        core = GatewayCore(GatewayConfig(stack.model_dir, "m", 2048), router, GatewayMetrics("m", "gw-test", router))
        try:
            await router.refresh()
            gone = next(w for w in router.decode if w.address == dead)
            assert not gone.healthy
            gone.healthy = True  # as the last health check saw it
            gone.stats.free_blocks = 10**6  # the router's first choice
            work = core.work(core.token_ids(prompt), SamplingParams(max_tokens=8, temperature=0))
            ids = [t.token_id async for chunk in core.generate(work) for t in chunk.tokens]
            assert not gone.healthy  # marked failed by the call
            return ids, core
        finally:
            await router.close()

    ids, core = asyncio.run(run([dead, stack.address("decode-0")]))
    assert ids == want_ids
    retried = [line for line in core.metrics.exposition().decode().splitlines()
               if line.startswith("grove:router_retries_total{") and 'code="UNAVAILABLE"' in line
               and 'worker_role="decode"' in line]
    assert len(retried) == 1 and retried[0].endswith(" 1.0"), retried
    with pytest.raises(UnavailableError, match="no healthy decode worker left after failures"):
        asyncio.run(run([dead]))
    assert wait_idle(stack)["prefill-0"] == (0, 0, 0)  # the KV no decode worker took was freed
