"""vLLM's sleep mode on a gateway in development mode with ``--enable-sleep-mode``, in front of the
stack's two prefill and two decode workers: ``/sleep`` gives the workers' memory back (measured in
their resident memory), a request waits while they sleep (and another gateway's is refused at
once, naming the sleep), ``/wake_up`` brings the same answers back; and an RL trainer's step
(level 2, wake the weights, update them, wake the KV cache) serves the new weights, equal to
transformers on them."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from bench.checkpoints import retrained_checkpoint
from engine.config import ModelConfig
from launcher.stack import Stack
from launcher.stack_probe import worker_stats
from tests.pipeline.gateway_process import Gateway
from tests.pipeline.test_weight_update import MAX_TOKENS, PROMPT, _complete, _hf_greedy, _post, _update

MiB = 2**20


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _worker_rss(stack: Stack) -> dict[str, int]:
    return {s.name: _rss(s.proc.pid) for s in stack.services if s.name.startswith(("prefill", "decode"))}


def _sleeping(url: str) -> bool:
    return httpx.get(url + "/is_sleeping", timeout=30).json()["is_sleeping"]


def test_sleep_gives_memory_back_and_wakes_to_the_same_answers(stack: Stack, model_dir: Path, tokenizer: Any,
                                                               tmp_path: Path) -> None:
    gw = Gateway(stack, tmp_path, "--server-dev-mode", "--enable-sleep-mode")
    url = gw.http_url
    mc = ModelConfig.from_dir(model_dir)
    block_bytes = mc.num_layers * 2 * 16 * mc.num_kv_heads * mc.head_dim * 4  # fp32, 16-token blocks
    long_prompt = " ".join(f"Item {i}: a lantern, a rope and a map of the coast." for i in range(40))
    try:
        before = _complete(url)
        _complete(url, long_prompt, max_tokens=64)  # ~600 prompt tokens: ~38 blocks each on a prefill and a decode worker
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

        assert asyncio.run(wake_after(1.0))["choices"][0]["token_ids"] == before["choices"][0]["token_ids"]
        assert not _sleeping(url)

        # level 2: the weights go too, and are read again on waking
        rss = _worker_rss(stack)
        assert _post(url, "/sleep", params={"level": "2", "mode": "wait"}).status_code == 200
        asleep = _worker_rss(stack)
        assert all(rss[n] - asleep[n] >= 300 * MiB for n in rss), {n: (rss[n] - asleep[n]) / MiB for n in rss}
        # an RL trainer's step: the weights woken, new ones put in, then the KV cache
        assert _post(url, "/wake_up", params={"tags": "bogus"}).status_code == 400
        assert _post(url, "/wake_up", params={"tags": "weights"}).status_code == 200
        assert _sleeping(url) and httpx.get(url + "/is_paused").json() == {"is_paused": True}
        new_dir = retrained_checkpoint(model_dir, tmp_path / "step-2", seed=1)
        r = _update(url, str(new_dir))
        assert r.status_code == 200, r.text
        assert _post(url, "/wake_up", params={"tags": "kv_cache"}).status_code == 200
        assert not _sleeping(url) and httpx.get(url + "/is_paused").json() == {"is_paused": False}
        assert _complete(url)["choices"][0]["token_ids"] == _hf_greedy(new_dir, tokenizer, PROMPT, MAX_TOKENS)
    finally:  # the stack's other tests run on the bundled weights, awake
        _post(url, "/wake_up")
        assert _post(url, "/pause", params={"mode": "wait"}).status_code == 200
        restored = _update(url, str(model_dir))
        assert _post(url, "/resume").status_code == 200
        assert restored.status_code == 200, restored.text
        gw.stop()
    deadline = time.monotonic() + 30  # the stack's gateway finds its workers healthy again
    while (r := httpx.post(stack.http_url + "/v1/completions", json={
            "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": True},
            timeout=120)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert r.json()["choices"][0]["token_ids"] == before["choices"][0]["token_ids"]
