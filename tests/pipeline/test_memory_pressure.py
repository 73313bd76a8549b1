"""A stack whose workers' KV pools are small (40 blocks, 640 tokens): requests wait for room and are
served, rather than refused with a 429 or lost; every block comes back."""
from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import pytest

from engine.reference import ReferenceOutput, compare_greedy
from engine.request import WorkRequest
from engine.sampling_params import SamplingParams
from gateway import core as gateway_core
from gateway.core import GatewayConfig, GatewayCore
from gateway.errors import OverloadedError
from gateway.metrics import GatewayMetrics
from gateway.router import Router
from grove.internal.v1 import worker_pb2 as wpb
from grove.internal.v1 import worker_pb2_grpc as wpb_grpc
from launcher.stack import Stack, StackConfig
from launcher.stack_probe import gateway_retries, kvstore_stats, wait_idle, worker_stats
from protocol.pipeline import work_to_pb
from tests.observability.conftest import scrape, total
from tests.prompts import engine_prompts


@pytest.fixture(scope="module")
def tight(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # KV leases of 1.5 s: a request waiting longer for room keeps its KV only by renewing the lease
    config = StackConfig(model=str(model_dir), num_prefill=1, num_decode=1, extra_worker_args=("--num-kv-blocks", "40"),
                         lease_ttl=1.5, log_dir=str(tmp_path_factory.mktemp("tight-stack")), threads_per_worker=1)
    with Stack(config) as s:
        yield s


def _complete(stack: Stack, ids: list[int], max_tokens: int, lookahead: bool = True) -> httpx.Response:
    return httpx.post(stack.http_url + "/v1/completions", timeout=300,
                      json={"prompt": ids, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True,
                            "lookahead": lookahead})


def _decoding(stream: httpx.Response) -> Iterator[str]:
    """The stream's lines, from the third chunk of text on: its request is in the decode worker's
    batch (the first chunk comes from the prefill worker, before the handoff)."""
    lines = stream.iter_lines()
    seen = 0
    for line in lines:
        seen += line.startswith("data:") and '"text"' in line
        if seen == 3:
            return lines
    raise AssertionError("the stream ended before it decoded")


@contextlib.contextmanager
def _renewing(stub: wpb_grpc.PrefillWorkerStub, leases: list[str]) -> Iterator[list[str]]:
    """Renews every lease in ``leases`` (a list the caller may still append to) every 0.3 s, as a
    decode worker waiting for room does: the tight stack's leases last 1.5 s, less than a 300-token
    prefill takes on a slow CPU (an AVX2-only AMD EPYC), so a lease taken before the next prefill
    would end during it. Yields the leases found ended (an assert in the thread would only warn)."""
    done = threading.Event()
    lapsed: list[str] = []

    def renew() -> None:
        while not done.wait(0.3):
            lapsed.extend(lease for lease in list(leases)
                          if not stub.RenewKV(wpb.RenewKVRequest(lease_id=lease), timeout=10).held)

    renewer = threading.Thread(target=renew)
    renewer.start()
    try:
        yield lapsed
    finally:
        done.set()
        renewer.join()


def _alone(ids: list[int], max_tokens: int) -> list[int]:
    """The engine alone, with no cache and nothing beside it, plain decoding: the reference (of
    requests sent without lookahead: in fp32 a draft tree's products may round otherwise)."""
    from engine.engine_config import EngineConfig
    from engine.llm_engine import LLMEngine

    eng = LLMEngine(EngineConfig(num_kv_blocks=64, num_threads=2, lookahead=False))
    return eng.generate([ids], SamplingParams(temperature=0, max_tokens=max_tokens))[0].output_ids


def test_a_burst_beyond_the_pools_waits_for_room_and_is_served(tight: Stack, tokenizer: Any,
                                                              hf_reference: Any) -> None:
    """Six requests at once into pools that hold two or three of them (each up to 200 prompt tokens
    and 64 output tokens). They wait for room (in the prefill worker's batch, in the decode
    worker's) and come out as transformers' greedy output, instead of a 429 "every decode worker
    is at capacity"."""
    prompts = engine_prompts(tokenizer)[:6]
    refs = hf_reference.many(prompts, 128)  # shared with the other greedy tests
    with ThreadPoolExecutor(len(prompts)) as ex:
        responses = list(ex.map(lambda ids: _complete(tight, ids, 64), prompts))
    for i, (r, full) in enumerate(zip(responses, refs)):
        assert r.status_code == 200, f"prompt {i}: {r.status_code} {r.text}"
        m = compare_greedy(ReferenceOutput(full.tokens[:64], full.top2_gaps[:64]), r.json()["choices"][0]["token_ids"])
        assert m.ok, f"prompt {i}: {m.message}"
    assert gateway_retries(tight) == 0  # nothing prefilled twice
    assert set(wait_idle(tight).values()) == {(0, 0, 0)}


def test_a_request_waiting_for_room_longer_than_its_kv_lease_keeps_its_kv(tight: Stack) -> None:
    """A long request fills the decode worker's pool (27 blocks of prompt, 200 tokens to go); a
    second (13 blocks) waits for it to finish, twice as long as the 1.5 s its KV is leased for on
    the prefill worker. The decode worker renews the lease while it waits: the KV is there when room
    is, nothing is prefilled twice, and the answer is the engine's alone."""
    rng = random.Random(22)
    long_ids = [rng.randrange(1000, 30000) for _ in range(420)]
    short_ids = [rng.randrange(1000, 30000) for _ in range(200)]
    m = scrape(f"127.0.0.1:{tight.service('decode-0').info['metrics_port']}")
    waits_before = total(m, "grove:handoff_block_waits_total")
    retries_before = gateway_retries(tight)
    body = {"prompt": long_ids, "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True,
            "lookahead": False}
    with httpx.stream("POST", tight.http_url + "/v1/completions", json=body, timeout=300) as stream:
        chunks = _decoding(stream)
        t0 = time.monotonic()
        r = _complete(tight, short_ids, 16, lookahead=False)
        waited = time.monotonic() - t0
        rest = [line for line in chunks if line]
    assert rest[-1] == "data: [DONE]"
    assert r.status_code == 200, r.text
    assert waited > 3.0, f"the second request did not wait past its lease ({waited:.1f} s): the test proves nothing"
    m = scrape(f"127.0.0.1:{tight.service('decode-0').info['metrics_port']}")
    assert total(m, "grove:handoff_block_waits_total") == waits_before + 1
    assert gateway_retries(tight) == retries_before  # the KV lease held: nothing prefilled again
    assert r.json()["choices"][0]["token_ids"] == _alone(short_ids, 16)
    assert set(wait_idle(tight).values()) == {(0, 0, 0)}


def test_a_waiting_handoff_whose_kv_is_gone_leaves_the_queue(tight: Stack) -> None:
    """A handoff waits for room behind a long request; its KV's lease has ended on the prefill
    worker, so its first renewal fails: the decode worker answers FAILED_PRECONDITION (the gateway
    would prefill it again) and takes it out of the queue, and the next handoff is served when
    room comes rather than waiting behind it for ever."""
    rng = random.Random(23)
    long_ids = [rng.randrange(1000, 30000) for _ in range(420)]
    gone_ids = [rng.randrange(1000, 30000) for _ in range(200)]
    next_ids = [rng.randrange(1000, 30000) for _ in range(200)]
    work = WorkRequest(f"gone-{rng.random()}", tuple(gone_ids), SamplingParams(temperature=0.0, max_tokens=8), seed=1)
    with grpc.insecure_channel(tight.address("prefill-0")) as ch:
        stub = wpb_grpc.PrefillWorkerStub(ch)
        pre = stub.Prefill(wpb.PrefillRequest(request=work_to_pb(work)), timeout=120)
        assert stub.ReleaseKV(wpb.ReleaseKVRequest(lease_id=pre.kv.lease_id), timeout=10).released
    body = {"prompt": long_ids, "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True,
            "lookahead": False}
    with httpx.stream("POST", tight.http_url + "/v1/completions", json=body, timeout=300) as stream:
        chunks = _decoding(stream)
        with grpc.insecure_channel(tight.address("decode-0")) as ch:
            call = wpb_grpc.DecodeWorkerStub(ch).Decode(
                wpb.DecodeRequest(request=work_to_pb(work), first_token=pre.first_token, kv=pre.kv, first_text=pre.text),
                timeout=60)
            with pytest.raises(grpc.RpcError) as err:
                list(call)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value
        assert "lease" in err.value.details()
        r = _complete(tight, next_ids, 8, lookahead=False)
        rest = [line for line in chunks if line]
    assert rest[-1] == "data: [DONE]"
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["token_ids"] == _alone(next_ids, 8)
    assert set(wait_idle(tight).values()) == {(0, 0, 0)}


def test_a_prefix_read_from_the_kvstore_into_a_full_pool_waits_for_room(tight: Stack) -> None:
    """The prefill worker's pool is full of KV it holds for decode workers. A prompt whose prefix
    the kvstore has takes what blocks are free for it and waits in the batch for the rest, rather
    than a 429 for want of blocks to read the prefix into; it answers as a cold computation does."""
    rng = random.Random(21)
    prefix = [rng.randrange(1000, 30000) for _ in range(320)]  # 20 blocks
    stored_before = sum(t.cached_blocks for t in kvstore_stats(tight).tiers)
    assert _complete(tight, prefix + [7, 8, 9], 1).status_code == 200  # prefilled, written to the kvstore
    deadline = time.monotonic() + 20  # the write-back runs in the background
    while sum(t.cached_blocks for t in kvstore_stats(tight).tiers) < stored_before + 20:
        assert time.monotonic() < deadline, "the prefill worker never wrote its blocks to the kvstore"
        time.sleep(0.1)

    # two prompts' KV held for a decode worker that has not come for it: 38 of the 40 blocks,
    # so the prefix's blocks left in the prefill worker's own cache are recycled
    leases: list[str] = []
    with grpc.insecure_channel(tight.address("prefill-0")) as ch:
        stub = wpb_grpc.PrefillWorkerStub(ch)
        with _renewing(stub, leases) as lapsed:
            for i in range(2):
                ids = [rng.randrange(1000, 30000) for _ in range(300)]  # 19 blocks
                work = WorkRequest(f"holder-{i}-{rng.random()}", tuple(ids),
                                   SamplingParams(temperature=0.0, max_tokens=8), seed=1)
                leases.append(stub.Prefill(wpb.PrefillRequest(request=work_to_pb(work)), timeout=120).kv.lease_id)
            assert all(leases) and worker_stats(tight)["prefill-0"].free_blocks <= 2  # the prefix needs 20
        assert not lapsed, "a held lease ended: the pool was not full all along, the test proves nothing"
        # no more renewals: the leases end at release_later's release (or 1.5 s from here at the latest)

        def release_later() -> None:
            time.sleep(1.0)
            for lease in leases:
                stub.ReleaseKV(wpb.ReleaseKVRequest(lease_id=lease), timeout=10)

        releaser = threading.Thread(target=release_later)
        releaser.start()
        try:
            r = _complete(tight, prefix + [10, 11], 8, lookahead=False)
        finally:
            releaser.join()
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["token_ids"] == _alone(prefix + [10, 11], 8)
    assert set(wait_idle(tight).values()) == {(0, 0, 0)}


def test_a_prefill_queued_past_the_gateways_deadline_is_busy_not_broken(tight: Stack,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt queued behind KV held for decode workers outlasts the gateway's prefill deadline
    (120 s; 1 s here). The worker is busy, not broken: the gateway answers 429 and keeps routing to
    it. It used to mark it failed, and every request in the next second got a 503 "no healthy
    prefill worker" (a probe of the stack: 92 of them). The real gateway core and router over real
    channels to the tight stack's workers."""
    monkeypatch.setattr(gateway_core, "PREFILL_TIMEOUT_S", 1.0)
    rng = random.Random(24)
    leases: list[str] = []
    with grpc.insecure_channel(tight.address("prefill-0")) as ch:
        stub = wpb_grpc.PrefillWorkerStub(ch)
        try:
            with _renewing(stub, leases) as lapsed:
                for i in range(2):  # 38 of the 40 blocks held for a decode worker that does not come
                    ids = [rng.randrange(1000, 30000) for _ in range(300)]
                    work = WorkRequest(f"holder-{i}-{rng.random()}", tuple(ids),
                                       SamplingParams(temperature=0.0, max_tokens=8), seed=1)
                    leases.append(stub.Prefill(wpb.PrefillRequest(request=work_to_pb(work)), timeout=120).kv.lease_id)

                async def run() -> None:
                    router = Router([tight.address("prefill-0")], [tight.address("decode-0")], block_size=16)
                    core = GatewayCore(GatewayConfig(tight.model_dir, "m", 640), router, GatewayMetrics("m", "gw-test", router))
                    try:
                        await router.refresh()
                        work = core.work([rng.randrange(1000, 30000) for _ in range(300)],
                                         SamplingParams(max_tokens=4, temperature=0))
                        with pytest.raises(OverloadedError, match="every prefill worker is at capacity"):
                            async for _ in core.generate(work):
                                pass
                        assert all(w.healthy for w in router.prefill)  # still routed to
                    finally:
                        await router.close()

                asyncio.run(run())
            assert not lapsed, "a held lease ended: the pool was not full all along, the test proves nothing"
        finally:
            for lease in leases:
                stub.ReleaseKV(wpb.ReleaseKVRequest(lease_id=lease), timeout=10)
    assert set(wait_idle(tight).values()) == {(0, 0, 0)}
