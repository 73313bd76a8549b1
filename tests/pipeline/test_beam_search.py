"""vLLM's beam search (``use_beam_search``, the width ``n``) through the stack, against a reference
beam search written here on transformers' model: the same beams, in the same order, with the same
finish reasons, for several widths, length penalties and prompts."""
from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import openai
import pytest
import torch

from engine.tokenizer import apply_chat_template
from launcher.stack import Stack

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


def reference(hf_model: Any, eos: int, prompt: list[int], width: int, max_tokens: int, length_penalty: float,
              ignore_eos: bool = False) -> list[tuple[list[int], str]]:
    """vLLM's beam search on transformers' logits: each live beam's 2 x width likeliest next tokens
    (equal logprobs by token id), the width best by score go on; ended and live beams ranked at the end."""
    def score(tokens: list[int], cum: float, ended: bool) -> float:
        return cum / ((len(prompt) + len(tokens) - ended) ** length_penalty)

    live: list[tuple[list[int], float]] = [([], 0.0)]
    ended: list[tuple[list[int], float]] = []
    for _ in range(max_tokens):
        grown = []
        for tokens, cum in live:
            with torch.no_grad():
                logits = hf_model(torch.tensor([prompt + tokens])).logits[0, -1].float()
            lps = torch.log_softmax(logits, -1).numpy()
            for t in np.lexsort((np.arange(len(lps)), -lps))[: 2 * width]:
                (ended if int(t) == eos and not ignore_eos else grown).append((tokens + [int(t)], cum + float(lps[t])))
        grown.sort(key=lambda b: score(b[0], b[1], False), reverse=True)
        live = grown[:width]
    done = [(t, c, True) for t, c in ended] + [(t, c, False) for t, c in live]
    done.sort(key=lambda b: score(*b), reverse=True)
    return [(t, "stop" if e else "length") for t, _, e in done[:width]]


def _beams(stack: Stack, body: dict[str, Any]) -> list[tuple[list[int], str]]:
    r = httpx.post(stack.http_url + "/v1/completions", timeout=300,
                   json={**body, "use_beam_search": True, "return_token_ids": True})
    assert r.status_code == 200, r.text
    return [(c["token_ids"], c["finish_reason"]) for c in r.json()["choices"]]


# width 1: the greedy test; each case on two of the three prompts (the reference's forwards, one per
# beam and token without a KV cache, are most of the test's time)
@pytest.mark.parametrize("width, length_penalty, prompts", [(3, 1.0, PROMPTS[:2]), (4, 0.5, PROMPTS[1:]),
                                                            (2, 2.0, PROMPTS[::2])],
                         ids=["3-1.0", "4-0.5", "2-2.0"])
def test_the_beams_are_the_reference_beams(stack: Stack, hf_model: Any, tokenizer: Any, width: int,
                                           length_penalty: float, prompts: list[str]) -> None:
    eos = tokenizer.eos_token_id
    for text in prompts:
        prompt = tokenizer(text)["input_ids"]
        got = _beams(stack, {"prompt": text, "max_tokens": 8, "n": width, "length_penalty": length_penalty})
        assert got == reference(hf_model, eos, prompt, width, 8, length_penalty), text
        assert len({tuple(t) for t, _ in got}) == width  # width different beams


def test_width_one_is_greedy_and_ignore_eos_keeps_every_beam_live(stack: Stack, hf_model: Any, tokenizer: Any) -> None:
    text = PROMPTS[0]
    greedy = httpx.post(stack.http_url + "/v1/completions", timeout=60, json={
        "prompt": text, "max_tokens": 10, "temperature": 0, "ignore_eos": True, "return_token_ids": True}).json()
    [(tokens, _)] = _beams(stack, {"prompt": text, "max_tokens": 10, "n": 1, "ignore_eos": True})
    assert tokens == greedy["choices"][0]["token_ids"]
    got = _beams(stack, {"prompt": text, "max_tokens": 6, "n": 3, "ignore_eos": True})
    assert got == reference(hf_model, tokenizer.eos_token_id, tokenizer(text)["input_ids"], 3, 6, 1.0, ignore_eos=True)
    assert all(len(t) == 6 and f == "length" for t, f in got)


def test_prompts_and_chat_through_the_openai_client(stack: Stack, hf_model: Any, tokenizer: Any) -> None:
    r = httpx.post(stack.http_url + "/v1/completions", timeout=300, json={
        "prompt": PROMPTS[:2], "max_tokens": 6, "n": 2, "use_beam_search": True, "return_token_ids": True}).json()
    got = [(c["index"], c["token_ids"]) for c in r["choices"]]
    want = [t for p in PROMPTS[:2] for t, _ in reference(hf_model, tokenizer.eos_token_id, tokenizer(p)["input_ids"],
                                                           2, 6, 1.0)]
    assert got == list(enumerate(want))
    assert r["usage"]["completion_tokens"] == sum(len(t) for t in want)
    client = openai.OpenAI(base_url=stack.http_url + "/v1", api_key="none", timeout=300)
    msgs = [{"role": "user", "content": "Name a color."}]
    chat = client.chat.completions.create(model="", messages=msgs, max_tokens=8, n=3, extra_body={"use_beam_search": True})
    ids = apply_chat_template(tokenizer, msgs)
    want_texts = [tokenizer.decode(t, skip_special_tokens=True)
                  for t, _ in reference(hf_model, tokenizer.eos_token_id, list(ids), 3, 8, 1.0)]
    assert [c.message.content for c in chat.choices] == want_texts


@pytest.mark.parametrize("extra, param", [
    ({"stream": True}, "stream"), ({"logprobs": 2}, "logprobs"), ({"n": 11}, "n"), ({"echo": True}, "echo"),
    ({"length_penalty": "long"}, "length_penalty"), ({"use_beam_search": "yes"}, "use_beam_search"),
    ({"response_format": {"type": "json_object"}}, "use_beam_search"),
])
def test_what_beam_search_cannot_give_is_a_400(stack: Stack, extra: dict[str, Any], param: str) -> None:
    r = httpx.post(stack.http_url + "/v1/completions", timeout=30,
                   json={"prompt": "Hi", "max_tokens": 4, "use_beam_search": True, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_length_penalty_without_beam_search_is_a_400(stack: Stack) -> None:
    r = httpx.post(stack.http_url + "/v1/completions", timeout=30, json={"prompt": "Hi", "max_tokens": 2,
                                                                         "length_penalty": 0.5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "length_penalty"


def test_a_salted_search_shares_no_cached_prefix_with_other_tenants(stack: Stack) -> None:
    body = {"prompt": "Repeat after me: " + "the quick brown fox jumps over the lazy dog, " * 4, "max_tokens": 2,
            "n": 2, "use_beam_search": True}
    for _ in range(2):  # the second finds the first's prompt blocks
        cached = httpx.post(stack.http_url + "/v1/completions", json=body, timeout=120).json()["usage"]
    assert cached["prompt_tokens_details"]["cached_tokens"] >= 32
    salted = httpx.post(stack.http_url + "/v1/completions", json={**body, "cache_salt": "tenant-b"}, timeout=120)
    assert salted.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
