"""vLLM's RL endpoints on a gateway in development mode, in front of the stack's two prefill and
two decode workers: ``/pause`` (a request that arrives waits, one in flight ends "abort" with what
it had and frees its KV), ``/update_weights`` from a checkpoint directory (every worker serves it,
greedy output equal to transformers' on that checkpoint, no KV of the old weights served from
any cache), ``/resume``; and the original weights put back at the end, found again in the
kvstore's cache."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.checkpoints import other_architecture, retrained_checkpoint
from launcher.stack import Stack
from launcher.stack_probe import wait_idle
from tests.pipeline.gateway_process import Gateway

PROMPT = ("Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
          "once or twice she had peeped into the book her sister was reading, but it had no pictures or "
          "conversations in it, and what is the use of a book, thought Alice, without pictures or conversations? "
          "So she was considering in her own mind")
MAX_TOKENS = 12


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


def test_pause_update_weights_resume(stack: Stack, model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    assert _post(stack.http_url, "/pause").status_code == 404  # not in development mode
    gw = Gateway(stack, tmp_path, "--server-dev-mode", "--weight-transfer-config", '{"backend": "disk"}')
    url = gw.http_url
    new_dir = retrained_checkpoint(model_dir, tmp_path / "step-1")
    try:
        before = _complete(url)
        assert before["choices"][0]["token_ids"] == _hf_greedy(model_dir, tokenizer, PROMPT, MAX_TOKENS)
        r = _update(url, str(new_dir))
        assert r.status_code == 400 and "POST /pause first" in r.text, r.text
        assert httpx.get(url + "/is_paused").json() == {"is_paused": False}
        assert _post(url, "/pause", params={"mode": "keep"}).status_code == 400
        r = _post(url, "/sleep")
        assert r.status_code == 400 and "--enable-sleep-mode" in r.text, r.text

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
        assert want != before["choices"][0]["token_ids"]  # the checkpoint answers otherwise
        answer = got["answer"]
        assert answer["choices"][0]["token_ids"] == want
        # the prompt was cached (workers, kvstore) under the old weights: none of it is served now
        assert answer["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0) == 0, answer["usage"]
        again = _complete(url)  # the new weights' own KV is cached from here on
        assert again["choices"][0]["token_ids"] == want and again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    finally:  # the stack's other tests run on the bundled weights
        assert _post(url, "/pause", params={"mode": "wait"}).status_code == 200
        restored = _update(url, str(model_dir))
        assert _post(url, "/resume").status_code == 200
        assert restored.status_code == 200, restored.text
        gw_log = gw.log
        gw.stop()
    # the bundled weights again: their answer, their KV found again in the kvstore (content-addressed)
    back = _complete(stack.http_url)
    assert back["choices"][0]["token_ids"] == before["choices"][0]["token_ids"], gw_log.read_text()[-3000:]
    assert json.loads(json.dumps(back["usage"]))["prompt_tokens_details"]["cached_tokens"] > 0


def test_a_pause_in_abort_mode_ends_what_runs_with_what_it_had(stack: Stack, tmp_path: Path) -> None:
    gw = Gateway(stack, tmp_path, "--server-dev-mode")
    try:
        async def run() -> tuple[list[str], dict[str, Any], str | None]:
            async with httpx.AsyncClient(base_url=gw.http_url, timeout=120) as client:
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
        assert _complete(gw.http_url, "Count: one, two,")["choices"][0]["finish_reason"] == "length"  # resumed
    finally:
        gw.stop()
