"""vLLM's RL endpoints on a gateway in development mode with sleep mode on, in front of the
stack's two prefill and two decode workers:

- ``/pause`` (a request that arrives waits; one in flight ends "abort" with what it had and frees
  its KV), ``/update_weights`` from a checkpoint directory (every worker serves it, greedy output
  equal to transformers' on that checkpoint, no KV of the old weights served from any cache),
  ``/resume``; the original weights put back at the end, their KV found again in the kvstore;
- sleep mode: ``/sleep`` gives the workers' memory back (measured in their resident memory), a
  request waits while they sleep (another gateway's is refused at once), ``/wake_up`` brings the
  same answers back; an RL trainer's step (level 2, wake the weights, update them, wake the KV
  cache) serves the new weights, equal to transformers on them.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import torch

from bench.checkpoints import other_architecture, retrained_checkpoint
from engine.config import ModelConfig
from launcher.stack import Stack
from launcher.stack_probe import wait_idle, worker_stats
from tests.pipeline.gateway_process import Gateway

PROMPT = ("Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
          "once or twice she had peeped into the book her sister was reading, but it had no pictures or "
          "conversations in it, and what is the use of a book, thought Alice, without pictures or conversations? "
          "So she was considering in her own mind")
MAX_TOKENS = 12
MiB = 2**20


@pytest.fixture(scope="module")
def dev_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(stack, tmp_path_factory.mktemp("rl-gateway"), "--server-dev-mode", "--enable-sleep-mode",
                 "--weight-transfer-config", '{"backend": "disk"}')
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def bundled_answer(stack: Stack) -> list[int]:
    """The bundled weights' greedy answer to PROMPT (the stack's own gateway)."""
    return _complete(stack.http_url)["choices"][0]["token_ids"]


def _hf_greedy(checkpoint: Path, tokenizer: Any, prompt: str, max_tokens: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


def _complete(url: str, prompt: str = PROMPT, **body: Any) -> dict[str, Any]:
    r = httpx.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
                                                  "return_token_ids": True, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _post(url: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(url + path, timeout=300, **kw)


def _update(url: str, path: str) -> httpx.Response:
    return _post(url, "/update_weights", json={"update_info": {"path": path}})


def _restore(url: str, model_dir: Path) -> None:
    """The bundled weights served again, every worker awake, generation resumed."""
    assert _post(url, "/wake_up").status_code == 200
    assert _post(url, "/pause", params={"mode": "wait"}).status_code == 200
    restored = _update(url, str(model_dir))
    assert _post(url, "/resume").status_code == 200
    assert restored.status_code == 200, restored.text


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _worker_rss(stack: Stack) -> dict[str, int]:
    return {s.name: _rss(s.proc.pid) for s in stack.services if s.name.startswith(("prefill", "decode"))}


def _sleeping(url: str) -> bool:
    return httpx.get(url + "/is_sleeping", timeout=30).json()["is_sleeping"]


def test_pause_update_weights_resume(stack: Stack, dev_gateway: Gateway, bundled_answer: list[int], model_dir: Path,
                                     tokenizer: Any, tmp_path: Path) -> None:
    assert _post(stack.http_url, "/pause").status_code == 404  # not in development mode
    url = dev_gateway.http_url
    new_dir = retrained_checkpoint(model_dir, tmp_path / "step-1")
    try:
        r = _update(url, str(new_dir))
        assert r.status_code == 400 and "POST /pause first" in r.text, r.text
        assert httpx.get(url + "/is_paused").json() == {"is_paused": False}
        assert _post(url, "/pause", params={"mode": "keep"}).status_code == 400

        async def paused_update() -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=url, timeout=300) as client:
                r = await client.post("/pause", params={"mode": "wait"})
                assert r.json() == {"status": "paused"}, r.text
                assert (await client.get("/is_paused")).json() == {"is_paused": True}
                # a request that arrives while paused waits at the door
                waiting = asyncio.ensure_future(client.post("/v1/completions", json={
                    "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": True}))
                await asyncio.sleep(1.0)
                assert not waiting.done()
                # checkpoints the workers refuse: none serves anything new
                for bad, why in ((str(other_architecture(model_dir, tmp_path / "other")), "num_layers"),
                                 ("relative/dir", "absolute path"), (str(tmp_path / "absent"), "absolute path")):
                    r = await client.post("/update_weights", json={"update_info": {"path": bad}})
                    assert r.status_code == 400 and why in r.text, r.text
                r = await client.post("/update_weights", json={"update_info": {}})
                assert r.status_code == 400 and "update_info" in r.text
                assert (await client.post("/init_weight_transfer_engine", json={"init_info": {}})).status_code == 200
                r = await client.post("/update_weights", json={"update_info": {"path": str(new_dir)}})
                assert r.status_code == 200, r.text
                updated = r.json()
                assert not waiting.done()
                assert (await client.post("/resume")).json() == {"status": "resumed"}
                answer = (await waiting).json()
                return {"updated": updated, "answer": answer}

        got = asyncio.run(paused_update())
        updated = got["updated"]
        assert len(updated["workers"]) == 4 and set(updated["workers"].values()) == {updated["model_id"]}
        want = _hf_greedy(new_dir, tokenizer, PROMPT, MAX_TOKENS)
        assert want != bundled_answer  # the checkpoint answers otherwise
        answer = got["answer"]
        assert answer["choices"][0]["token_ids"] == want
        # the prompt was cached (workers, kvstore) under the old weights: none of it is served now
        assert answer["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0) == 0, answer["usage"]
        again = _complete(url)  # the new weights' own KV is cached from here on
        assert again["choices"][0]["token_ids"] == want and again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    finally:  # the stack's other tests run on the bundled weights
        _restore(url, model_dir)
    # the bundled weights again: their answer, their KV found again in the kvstore (content-addressed)
    back = _complete(stack.http_url)
    assert back["choices"][0]["token_ids"] == bundled_answer
    assert back["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_a_pause_in_abort_mode_ends_what_runs_with_what_it_had(stack: Stack, dev_gateway: Gateway) -> None:
    async def run() -> tuple[list[str], dict[str, Any], str | None]:
        async with httpx.AsyncClient(base_url=dev_gateway.http_url, timeout=120) as client:
            texts: list[str] = []
            last: dict[str, Any] = {}
            pause: asyncio.Future[httpx.Response] | None = None
            async with client.stream("POST", "/v1/completions", json={
                    "prompt": "Count: one, two,", "max_tokens": 400, "ignore_eos": True, "temperature": 0,
                    "stream": True, "stream_options": {"include_usage": True}}) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if event["choices"]:
                        texts.append(event["choices"][0]["text"])
                        if event["choices"][0]["finish_reason"]:
                            last = event
                    elif event.get("usage"):
                        last["usage"] = event["usage"]
                    if len(texts) == 5 and pause is None:
                        pause = asyncio.ensure_future(client.post("/pause"))  # mode abort, vLLM's default
            assert pause is not None
            paused = (await pause).json()
            resumed = (await client.post("/resume")).json()
            assert (paused, resumed) == ({"status": "paused"}, {"status": "resumed"})
            reason = last["choices"][0]["finish_reason"] if last else None
            return texts, last, reason

    texts, last, reason = asyncio.run(run())
    assert reason == "abort"
    assert 5 <= last["usage"]["completion_tokens"] < 400
    assert "".join(texts).strip()
    assert all(v == (0, 0, 0) for v in wait_idle(stack).values())  # every worker freed its KV
    assert _complete(dev_gateway.http_url, "Count: one, two,")["choices"][0]["finish_reason"] == "length"  # resumed


def test_sleep_gives_memory_back_and_wakes_to_the_same_answers(stack: Stack, dev_gateway: Gateway,
                                                               bundled_answer: list[int], model_dir: Path,
                                                               tokenizer: Any, tmp_path: Path) -> None:
    url = dev_gateway.http_url
    mc = ModelConfig.from_dir(model_dir)
    block_bytes = mc.num_layers * 2 * 16 * mc.num_kv_heads * mc.head_dim * 4  # fp32, 16-token blocks
    long_prompt = " ".join(f"Item {i}: a lantern, a rope and a map of the coast." for i in range(40))
    try:
        # ~600 prompt tokens: ~38 blocks each on a prefill and a decode worker
        _complete(url, long_prompt, max_tokens=64)
        assert not _sleeping(url)
        assert _post(url, "/sleep", params={"level": "3"}).status_code == 400
        rss = _worker_rss(stack)
        r = _post(url, "/sleep", params={"level": "1"})
        assert r.status_code == 200, r.text
        assert _sleeping(url) and httpx.get(url + "/is_paused").json() == {"is_paused": True}
        assert {name: list(s.asleep) for name, s in worker_stats(stack).items()} == \
            {name: ["kv_cache", "weights"] for name in rss}
        asleep = _worker_rss(stack)
        given = sum(rss[n] - asleep[n] for n in rss)
        assert given >= 2 * 30 * block_bytes, (given / MiB, rss, asleep)  # the KV pages given back
        # the stack's own gateway (not paused) reaches sleeping workers: refused at once, not a hang
        t0 = time.monotonic()
        other = httpx.post(stack.http_url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}, timeout=60)
        assert other.status_code == 503 and time.monotonic() - t0 < 30, other.text

        async def wake_after(delay_s: float, **params: Any) -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=url, timeout=300) as client:
                waiting = asyncio.ensure_future(client.post("/v1/completions", json={
                    "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": True}))
                await asyncio.sleep(delay_s)
                assert not waiting.done()  # a request waits while the workers sleep
                r = await client.post("/wake_up", params=params)
                assert r.status_code == 200, r.text
                return (await waiting).json()

        assert asyncio.run(wake_after(1.0))["choices"][0]["token_ids"] == bundled_answer
        assert not _sleeping(url)

        # level 2: the weights go too, and are read again on waking
        rss = _worker_rss(stack)
        assert _post(url, "/sleep", params={"level": "2", "mode": "wait"}).status_code == 200
        asleep = _worker_rss(stack)
        assert all(rss[n] - asleep[n] >= 300 * MiB for n in rss), {n: (rss[n] - asleep[n]) / MiB for n in rss}
        # an RL trainer's step: the weights woken, new ones put in, then the KV cache
        new_dir = retrained_checkpoint(model_dir, tmp_path / "step-2", seed=1)
        r = _update(url, str(new_dir))
        assert r.status_code == 400 and "wake them first" in r.text, r.text  # none loaded while asleep
        assert _post(url, "/wake_up", params={"tags": "bogus"}).status_code == 400
        assert _post(url, "/wake_up", params={"tags": "weights"}).status_code == 200
        assert _sleeping(url) and httpx.get(url + "/is_paused").json() == {"is_paused": True}
        r = _update(url, str(new_dir))
        assert r.status_code == 200, r.text
        assert _post(url, "/wake_up", params={"tags": "kv_cache"}).status_code == 200
        assert not _sleeping(url) and httpx.get(url + "/is_paused").json() == {"is_paused": False}
        assert _complete(url)["choices"][0]["token_ids"] == _hf_greedy(new_dir, tokenizer, PROMPT, MAX_TOKENS)
    finally:  # the stack's other tests run on the bundled weights, awake
        _restore(url, model_dir)
    deadline = time.monotonic() + 30  # the stack's gateway finds its workers healthy again
    while (r := httpx.post(stack.http_url + "/v1/completions", json={
            "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": True},
            timeout=120)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert r.json()["choices"][0]["token_ids"] == bundled_answer
