"""Greedy through the pipeline with lookahead on equals lookahead off equals transformers."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from engine.reference import ReferenceOutput, compare_greedy
from launcher.stack import Stack
from tests.prompts import code_edit_ids, engine_prompts

MAX_TOKENS = 32
logger = logging.getLogger(__name__)


def _prefix(ref: ReferenceOutput, n: int) -> ReferenceOutput:
    return ReferenceOutput(ref.tokens[:n], ref.top2_gaps[:n])


def _run(stack: Stack, prompts: list[list[int]], lookahead: bool, concurrency: int) -> list[dict]:
    async def go() -> list[dict]:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=stack.http_url, timeout=300) as c:
            async def one(ids: list[int]) -> dict:
                async with sem:
                    r = await c.post("/v1/completions", json={"prompt": ids, "max_tokens": MAX_TOKENS, "temperature": 0,
                                                             "lookahead": lookahead, "return_token_ids": True})
                    assert r.status_code == 200, r.text
                    return r.json()
            return await asyncio.gather(*(one(p) for p in prompts))
    start = time.monotonic()
    outs = asyncio.run(go())
    logger.info("lookahead %s at concurrency %d: %d prompts in %.1f s", "on" if lookahead else "off",
                concurrency, len(prompts), time.monotonic() - start)
    return outs


def test_30_prompts_lookahead_on_off_and_transformers_agree(stack: Stack, tokenizer: Any, hf_reference: Any) -> None:
    # 5 code completions + 5 chats (their 128-token references are shared with the engine test)
    # + 20 code-edit prompts built from HumanEval solutions
    base = engine_prompts(tokenizer)
    edits = code_edit_ids(tokenizer, 20)
    prompts = base + edits
    start = time.monotonic()
    refs = [_prefix(r, MAX_TOKENS) for r in hf_reference.many(base, 128)] + hf_reference.many(edits, MAX_TOKENS)
    logger.info("transformers references in %.1f s", time.monotonic() - start)
    runs: dict[tuple[str, int], list[dict]] = {}  # concurrency 8 first: it computes the prompts on both prefill workers at once, and
    # the runs after it take their prompts' KV from the prefix caches (reuse must not change a token)
    runs[("on", 8)] = _run(stack, prompts, True, 8)
    runs[("on", 1)] = _run(stack, prompts, True, 1)
    runs[("off", 8)] = _run(stack, prompts, False, 8)
    for (mode, conc), outs in runs.items():
        for i, (ref, out) in enumerate(zip(refs, outs)):
            m = compare_greedy(ref, out["choices"][0]["token_ids"])
            if m.near_tie:
                print(f"{mode}@{conc} prompt {i}: {m.message}")  # noqa: T201
            assert m.ok, f"lookahead {mode} at concurrency {conc}, prompt {i}: {m.message}"
    on = [o["choices"][0]["token_ids"] for o in runs[("on", 1)]]
    assert on == [o["choices"][0]["token_ids"] for o in runs[("on", 8)]]
    assert on == [o["choices"][0]["token_ids"] for o in runs[("off", 8)]]
    accepted = sum(o["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] for o in runs[("on", 1)])
    assert accepted > 0, "lookahead never accepted a draft: the comparison proves nothing"
    assert all(o["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] == 0 for o in runs[("off", 8)])
    # the decode workers export the same in Prometheus counters, per draft position too
    scraped = ""
    for name in ("decode-0", "decode-1"):
        port = stack.service(name).info["metrics_port"]
        scraped += httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    total = sum(float(line.rsplit(" ", 1)[1]) for line in scraped.splitlines()
                if line.startswith("grove:spec_decode_num_accepted_tokens_total{"))
    assert total >= accepted
    assert any(line.startswith("grove:spec_decode_num_accepted_tokens_per_pos_total{") and 'position="0"' in line
               for line in scraped.splitlines())
