"""Prefix reuse through the kvstore, and cancellation that frees blocks in every process."""
from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, Callable

import grpc
import httpx
import pytest

from engine.request import WorkRequest
from engine.sampling_params import SamplingParams
from grove.internal.v1 import worker_pb2 as wpb
from grove.internal.v1 import worker_pb2_grpc as wpb_grpc
from grove.v1 import api_pb2 as api
from grove.v1 import api_pb2_grpc as api_grpc
from launcher.stack import Stack
from launcher.stack_probe import kvstore_stats, wait_idle, worker_stats
from protocol.pipeline import work_to_pb
from tests.observability.conftest import scrape, total


def test_shared_1000_token_prefix_is_reused_and_gives_the_same_text(stack: Stack, tokenizer: Any) -> None:
    rng = random.Random(11)
    prefix = [rng.randrange(1000, 30000) for _ in range(1000)]
    first = prefix + [rng.randrange(1000, 30000) for _ in range(20)]
    second = prefix + [rng.randrange(1000, 30000) for _ in range(20)]
    url = stack.http_url + "/v1/completions"

    def ask(ids: list[int]) -> dict:
        r = httpx.post(url, json={"prompt": ids, "max_tokens": 8, "temperature": 0, "return_token_ids": True}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    a = ask(first)
    assert a["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    b = ask(second)
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] >= 992
    # the same text as computed cold: the engine alone, with no cache, is the reference
    from engine.engine_config import EngineConfig  # the engine alone, no cache, as the reference
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    # plain decoding (lookahead equals it: tests/lookahead), which also skips the drafts' step-cost calibration
    reference = LLMEngine(EngineConfig(num_kv_blocks=80, num_threads=2, prefix_caching=False, lookahead=False))
    alone = reference.generate([second], SamplingParams(temperature=0, max_tokens=8))[0]
    assert alone.output_ids == b["choices"][0]["token_ids"]


def test_prefix_prefilled_on_one_worker_is_fetched_from_the_kvstore_by_the_other(stack: Stack) -> None:
    """Disaggregated prefix caching: worker B finds what worker A computed, through the kvstore.
    Worker A's request ends on its first token (max_tokens=1): its prompt is written back all the same."""
    rng = random.Random(12)
    prefix = [rng.randrange(1000, 30000) for _ in range(320)]  # 20 blocks

    def prefill(worker: str, ids: list[int], max_tokens: int) -> wpb.PrefillResponse:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        work = WorkRequest(f"direct-{worker}-{rng.random()}", tuple(ids), params, seed=1)
        with grpc.insecure_channel(stack.address(worker)) as ch:
            stub = wpb_grpc.PrefillWorkerStub(ch)
            resp = stub.Prefill(wpb.PrefillRequest(request=work_to_pb(work)), timeout=120)
            if resp.kv.lease_id:
                stub.ReleaseKV(wpb.ReleaseKVRequest(lease_id=resp.kv.lease_id), timeout=10)
        return resp

    cached_before = sum(t.cached_blocks for t in kvstore_stats(stack).tiers)
    first = prefill("prefill-0", prefix + [7, 8, 9], max_tokens=1)
    assert first.cached_tokens == 0 and first.finish_reason == "length" and not first.kv.lease_id
    deadline = time.monotonic() + 20  # the write-back runs in the background
    while sum(t.cached_blocks for t in kvstore_stats(stack).tiers) < cached_before + 20:
        assert time.monotonic() < deadline, "prefill-0 never wrote its blocks to the kvstore"
        time.sleep(0.1)
    fetched_before = worker_stats(stack)["prefill-1"].fetched_blocks
    assert prefill("prefill-1", prefix + [10, 11], max_tokens=4).cached_tokens == 320
    assert worker_stats(stack)["prefill-1"].fetched_blocks - fetched_before == 20


def test_a_chats_next_turn_reuses_the_answer_the_decode_worker_wrote(stack: Stack) -> None:
    """The decode worker writes the blocks it generated to the kvstore: a chat's next turn, whose
    prompt holds the previous answer, reads that answer's KV instead of computing it again, and
    answers as a cold computation does. Without the decode worker's write only the first turn's
    prompt would be cached (its prefill worker wrote that)."""
    url = stack.http_url + "/v1/chat/completions"
    salt = f"turns-{random.random()}"  # a namespace of this test's own: nothing in it is cached yet

    def chat(messages: list[dict[str, str]], max_tokens: int, cache_salt: str) -> dict[str, Any]:
        r = httpx.post(url, json={"messages": messages, "max_tokens": max_tokens, "temperature": 0,
                                  "cache_salt": cache_salt, "return_token_ids": True}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    turn1 = [{"role": "user", "content": "Write a short poem about the sea and its ships."}]
    first = chat(turn1, 80, salt)
    prompt1, answer = first["usage"]["prompt_tokens"], first["choices"][0]["token_ids"]
    assert len(answer) >= 40, answer
    wait_idle(stack)  # the write-backs run in the background
    turn2 = turn1 + [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                     {"role": "user", "content": "Now give it a title."}]
    second = chat(turn2, 12, salt)
    # every full block of the first turn's tokens whose KV was computed (not the last answer token's)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= (prompt1 + len(answer) - 1) // 16 * 16, \
        (second["usage"], prompt1, len(answer))
    cold = chat(turn2, 12, salt + "-cold")
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["choices"][0]["token_ids"] == cold["choices"][0]["token_ids"]


def test_a_cache_salt_keeps_a_prefix_apart_in_every_cache(stack: Stack) -> None:
    """vLLM's cache_salt: a prefix computed under one salt is found, by either prefill worker (its
    own cache, or the kvstore), only under that salt; the HTTP and gRPC APIs carry the salt."""
    rng = random.Random(14)
    prefix = [rng.randrange(1000, 30000) for _ in range(320)]  # 20 blocks

    def cached(worker: str, salt: str, tail: list[int]) -> int:
        work = WorkRequest(f"salted-{worker}-{rng.random()}", tuple(prefix + tail),
                           SamplingParams(temperature=0.0, max_tokens=1), seed=1, cache_salt=salt)
        with grpc.insecure_channel(stack.address(worker)) as ch:
            return wpb_grpc.PrefillWorkerStub(ch).Prefill(wpb.PrefillRequest(request=work_to_pb(work)),
                                                         timeout=120).cached_tokens

    def written(blocks: int) -> None:
        deadline = time.monotonic() + 20  # the write-back runs in the background
        while sum(t.cached_blocks for t in kvstore_stats(stack).tiers) < blocks:
            assert time.monotonic() < deadline, "the prefill worker never wrote its blocks to the kvstore"
            time.sleep(0.1)

    before = sum(t.cached_blocks for t in kvstore_stats(stack).tiers)
    assert cached("prefill-0", "tenant-a", [7, 8, 9]) == 0
    written(before + 20)
    assert cached("prefill-0", "tenant-b", [7, 8, 9]) == 0  # not from its own cache
    assert cached("prefill-0", "", [7, 8, 9]) == 0
    assert cached("prefill-1", "tenant-c", [10, 11]) == 0  # nor from the kvstore
    assert cached("prefill-1", "tenant-a", [10, 11]) == 320  # the kvstore's, under its salt
    assert cached("prefill-0", "tenant-a", [12]) == 320  # its own
    written(before + 4 * 20)  # a, b, unsalted, c: each a namespace of its own

    # through the APIs: the same prompt, its salt's prefix cached, another salt's not, one text
    prompt = [rng.randrange(1000, 30000) for _ in range(330)]

    def http(salt: str) -> tuple[int, list[int]]:
        r = httpx.post(stack.http_url + "/v1/completions", json={
            "prompt": prompt, "max_tokens": 6, "temperature": 0, "return_token_ids": True, "cache_salt": salt},
            timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"], r.json()["choices"][0]["token_ids"]

    first, text = http("tenant-d")
    assert first == 0
    assert http("tenant-d") == (320, text)
    assert http("tenant-e") == (0, text)
    with grpc.insecure_channel(stack.grpc_address) as ch:
        stub = api_grpc.GroveStub(ch)
        for salt, want in (("tenant-d", 320), ("tenant-f", 0)):
            reply = stub.Generate(api.GenerateRequest(prompt_token_ids=api.TokenIds(ids=prompt), cache_salt=salt,
                                                      sampling=api.SamplingParams(max_tokens=6, temperature=0.0)),
                                  timeout=300)
            assert (reply.usage.cached_tokens, list(reply.token_ids)) == (want, text)


def test_a_decode_worker_refuses_kv_whose_lease_ended(stack: Stack) -> None:
    """A NIXL read is one-sided: it would read a released lease's blocks (perhaps another request's
    KV by then) without a word. The decode worker asks the holder to confirm the lease after the
    read, and answers FAILED_PRECONDITION (the KV is lost; the gateway prefills again), freeing
    what it took."""
    rng = random.Random(15)
    prompt = [rng.randrange(1000, 30000) for _ in range(100)]
    work = WorkRequest(f"lost-{rng.random()}", tuple(prompt), SamplingParams(temperature=0.0, max_tokens=8), seed=1)
    with grpc.insecure_channel(stack.address("prefill-0")) as ch:
        stub = wpb_grpc.PrefillWorkerStub(ch)
        pre = stub.Prefill(wpb.PrefillRequest(request=work_to_pb(work)), timeout=120)
        assert pre.kv.lease_id and pre.kv.nixl_agent  # the stack hands KV over by NIXL
        assert stub.ReleaseKV(wpb.ReleaseKVRequest(lease_id=pre.kv.lease_id), timeout=10).released
    with grpc.insecure_channel(stack.address("decode-0")) as ch:
        call = wpb_grpc.DecodeWorkerStub(ch).Decode(wpb.DecodeRequest(
            request=work_to_pb(work), first_token=pre.first_token, kv=pre.kv, first_text=pre.text), timeout=60)
        with pytest.raises(grpc.RpcError) as e:
            list(call)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, e.value.details()
    assert "KV handoff failed" in e.value.details() and "lease" in e.value.details()
    assert wait_idle(stack)["decode-0"] == (0, 0, 0)


def test_kv_whose_nixl_read_fails_comes_over_grpc(stack: Stack) -> None:
    """A NIXL read that fails with the holder still answering (here: a handle naming an agent the
    decode worker cannot reach) is read again over gRPC, and the request is served as usual; the
    next handoff from that agent skips NIXL for a while. Counted and exported."""
    rng = random.Random(16)
    prompts = [[rng.randrange(1000, 30000) for _ in range(100)] for _ in range(2)]  # 7 blocks, the last partial
    params = SamplingParams(temperature=0.0, max_tokens=8)
    metrics = f"127.0.0.1:{stack.service('decode-0').info['metrics_port']}"
    before = scrape(metrics)
    got: list[list[int]] = []
    for k, prompt in enumerate(prompts):
        work = WorkRequest(f"nixl-down-{k}-{rng.random()}", tuple(prompt), params, seed=1)
        with grpc.insecure_channel(stack.address("prefill-0")) as ch:
            pre = wpb_grpc.PrefillWorkerStub(ch).Prefill(wpb.PrefillRequest(request=work_to_pb(work)), timeout=120)
        assert pre.kv.nixl_agent  # the stack hands KV over by NIXL
        pre.kv.nixl_agent = "grove-prefill-unreachable"  # its data plane, as the decode worker sees it
        with grpc.insecure_channel(stack.address("decode-0")) as ch:
            chunks = list(wpb_grpc.DecodeWorkerStub(ch).Decode(wpb.DecodeRequest(
                request=work_to_pb(work), first_token=pre.first_token, kv=pre.kv, first_text=pre.text), timeout=60))
        got.append([pre.first_token.token_id] + [t.token_id for c in chunks for t in c.tokens])
        m = scrape(metrics)
        assert total(m, "grove:kv_handoff_nixl_fallbacks_total") == total(before, "grove:kv_handoff_nixl_fallbacks_total") + 1
        pulled = total(m, "grove:kv_handoff_grpc_bytes_total") - total(before, "grove:kv_handoff_grpc_bytes_total")
        assert pulled == (k + 1) * 7 * pre.kv.block_bytes  # every block, over gRPC, each time
    want = [httpx.post(stack.http_url + "/v1/completions", json={
        "prompt": p, "max_tokens": 8, "temperature": 0, "return_token_ids": True}, timeout=120).json()
        for p in prompts]
    assert got == [w["choices"][0]["token_ids"] for w in want]
    assert wait_idle(stack)["prefill-0"] == (0, 0, 0)  # the leases were released


def test_decode_worker_pulls_only_the_blocks_it_lacks(stack: Stack) -> None:
    """The same 200-token prompt three times: two land on one of the two decode workers, whose
    prefix cache still holds the prompt's 12 full blocks, so it pulls only the partial last one."""
    rng = random.Random(13)
    prompt = [rng.randrange(1000, 30000) for _ in range(200)]
    before = worker_stats(stack)
    for _ in range(3):
        r = httpx.post(stack.http_url + "/v1/completions", json={"prompt": prompt, "max_tokens": 3, "temperature": 0},
                       timeout=300)
        assert r.status_code == 200, r.text
    after = worker_stats(stack)
    decoders = [n for n in after if n.startswith("decode")]
    reused = sum(after[n].local_prefix_blocks - before[n].local_prefix_blocks for n in decoders)
    pulled = sum(after[n].fetched_blocks - before[n].fetched_blocks for n in decoders)
    assert reused >= 12, (reused, pulled)
    assert reused + pulled == 3 * 13  # every prompt block came from exactly one place


def _leave_streams(stack: Stack, bodies: list[dict], enough: Callable[[list[dict]], bool]) -> list[list[dict]]:
    """Streams every body at once, each read until ``enough`` of its chunks so far, then left
    (leaving closes the connection: a client cancel). Returns each stream's chunks."""
    async def one(client: httpx.AsyncClient, body: dict) -> list[dict]:
        chunks: list[dict] = []
        async with client.stream("POST", "/v1/completions", json={**body, "stream": True, "ignore_eos": True}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunks.append(json.loads(line[6:]))
                    if enough(chunks):
                        break
        return chunks

    async def run() -> list[list[dict]]:
        async with httpx.AsyncClient(base_url=stack.http_url, timeout=300) as c:
            return await asyncio.gather(*(one(c, b) for b in bodies))

    return asyncio.run(run())


def test_cancelling_50_streams_midway_frees_every_block(stack: Stack) -> None:
    wait_idle(stack)
    bodies = [{"prompt": f"Story number {i}: once upon a time", "max_tokens": 200, "temperature": 0} for i in range(50)]
    assert all(len(chunks) >= 3 for chunks in _leave_streams(stack, bodies, lambda chunks: len(chunks) >= 3))
    snap = wait_idle(stack, timeout_s=30)
    assert all(v == (0, 0, 0) for v in snap.values()), snap


def test_cancelling_streams_of_several_choices_frees_every_block(stack: Stack) -> None:
    """A stream of n=4 choices left once every choice streams: all four requests end everywhere,
    the ones started after the first choice's first token too."""
    wait_idle(stack)

    def indices(chunks: list[dict]) -> set[int]:
        return {c["choices"][0]["index"] for c in chunks}

    bodies = [{"prompt": f"Tale {i}: long ago", "max_tokens": 300, "temperature": 1.0, "n": 4} for i in range(6)]
    streams = _leave_streams(stack, bodies, lambda chunks: len(indices(chunks)) == 4)
    assert all(indices(chunks) == {0, 1, 2, 3} for chunks in streams)
    snap = wait_idle(stack, timeout_s=30)
    assert all(v == (0, 0, 0) for v in snap.values()), snap


def test_streams_left_at_their_first_token_free_their_kv_at_once(stack: Stack) -> None:
    """A client gone after the first token (the prefill's), before the decode worker streamed:
    the prefill worker's KV is released then, not when its lease expires (30 s): Starlette cancels
    every await of the request, and the release runs in a task of its own."""
    wait_idle(stack)
    bodies = [{"prompt": f"Fable {i}: in a far land", "max_tokens": 300, "temperature": 0} for i in range(12)]
    _leave_streams(stack, bodies, lambda chunks: True)
    snap = wait_idle(stack, timeout_s=10)
    assert all(v == (0, 0, 0) for v in snap.values()), snap


def test_a_whole_response_whose_client_left_is_cancelled(stack: Stack) -> None:
    """A client that stops waiting for a whole (not streamed) response: its requests end at once
    (as vLLM aborts them), not after the 2,000 tokens nobody will read."""
    wait_idle(stack)
    body = {"prompt": "Count with me: one, two,", "max_tokens": 2000, "temperature": 0, "ignore_eos": True,
            "n": 2}
    with pytest.raises(httpx.ReadTimeout):  # 2,000 tokens take longer than 3 s: the client leaves
        httpx.post(stack.http_url + "/v1/completions", json=body, timeout=httpx.Timeout(300, read=3.0))
    snap = wait_idle(stack, timeout_s=10)
    assert all(v == (0, 0, 0) for v in snap.values()), snap
