"""The official openai client against the real stack: outputs equal transformers, token for token."""
from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import openai
import pytest
import torch

from engine.reference import ReferenceOutput, compare_greedy
from launcher.stack import Stack
from launcher.stack_probe import gateway_retries
from tests.prompts import engine_prompts


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.http_url + "/v1", api_key="unused", timeout=120)


def test_models_and_health(stack: Stack, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct"]
    assert httpx.get(stack.http_url + "/health").status_code == 200
    assert httpx.get(stack.http_url + "/ping").status_code == httpx.post(stack.http_url + "/ping").status_code == 200
    from engine.kv_layout import GROVE_VERSION
    assert httpx.get(stack.http_url + "/version").json() == {"version": GROVE_VERSION}


def test_load_counts_the_requests_in_flight(stack: Stack, client: openai.OpenAI) -> None:
    """vLLM's /load: a streamed request counts while it runs, and not once it is done."""
    def load() -> int:
        return int(httpx.get(stack.http_url + "/load").json()["server_load"])

    def settles_at_zero() -> bool:  # (a finished stream's count drops just after its last bytes)
        deadline = time.monotonic() + 10
        while load() and time.monotonic() < deadline:
            time.sleep(0.05)
        return load() == 0

    assert settles_at_zero()
    stream = client.completions.create(model="SmolLM2-135M-Instruct", prompt="Once upon a time", max_tokens=64,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))
    assert load() == 1
    for _ in stream:
        pass
    assert settles_at_zero()


def test_greedy_through_pipeline_equals_transformers_on_10_prompts(client: openai.OpenAI, tokenizer: Any,
                                                                    hf_reference: Any) -> None:
    prompts = engine_prompts(tokenizer)
    refs = hf_reference.many(prompts, 128)  # shared with the engine test; greedy is prefix-consistent
    for i, (ids, full) in enumerate(zip(prompts, refs)):
        r = client.completions.create(model="SmolLM2-135M-Instruct", prompt=ids, max_tokens=64, temperature=0,
                                      extra_body={"return_token_ids": True})
        got = r.choices[0].model_extra["token_ids"]
        m = compare_greedy(ReferenceOutput(full.tokens[:64], full.top2_gaps[:64]), got)
        if m.near_tie:
            print(f"prompt {i}: {m.message}")  # noqa: T201
        assert m.ok, f"prompt {i}: {m.message}"
        assert r.usage.completion_tokens == len(got)
        assert r.choices[0].text == tokenizer.decode(got, skip_special_tokens=True)


def test_chat_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "List three colours of the rainbow."}]
    whole = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=msgs, max_tokens=40, temperature=0)
    stream = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=msgs, max_tokens=40,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == whole.choices[0].message.content and text
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_completion_stop_string_and_logprobs(client: openai.OpenAI) -> None:
    base = client.completions.create(model="SmolLM2-135M-Instruct", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    words = base.choices[0].text
    stop = words.strip().split(",")[1].strip() if "," in words else words.strip()[:2]
    r = client.completions.create(model="SmolLM2-135M-Instruct", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0,
                                  stop=[stop], logprobs=2)
    assert r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].text and words.startswith(r.choices[0].text)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == r.usage.completion_tokens and all(x <= 0 for x in lp.token_logprobs)
    assert all(len(t) <= 2 for t in lp.top_logprobs)


def test_logit_bias_min_tokens_echo_and_stop_string_options(client: openai.OpenAI, tokenizer: Any) -> None:
    """OpenAI's logit_bias and echo, vLLM's min_tokens, include_stop_str_in_output and
    skip_special_tokens, each through the stack (the workers sample and detokenize)."""
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", temperature=0)
    base = client.completions.create(prompt="1, 2, 3, 4,", max_tokens=8, extra_body={"return_token_ids": True}, **kw)
    ids = base.choices[0].model_extra["token_ids"]
    # the first token banned: another comes first; a token pushed to +100 is taken at every step
    banned = client.completions.create(prompt="1, 2, 3, 4,", max_tokens=8, logit_bias={str(ids[0]): -100},
                                       extra_body={"return_token_ids": True}, **kw)
    assert banned.choices[0].model_extra["token_ids"][0] != ids[0]
    forced = client.completions.create(prompt="1, 2, 3, 4,", max_tokens=6, logit_bias={"28": 100},
                                       extra_body={"return_token_ids": True}, **kw)
    assert forced.choices[0].model_extra["token_ids"] == [28] * 6

    msgs = [{"role": "user", "content": "Say hi."}]
    short = client.chat.completions.create(messages=msgs, max_tokens=64, **kw)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 30
    longer = client.chat.completions.create(messages=msgs, max_tokens=64, extra_body={"min_tokens": 30}, **kw)
    assert longer.usage.completion_tokens >= 30
    assert longer.choices[0].message.content.startswith(short.choices[0].message.content)

    echoed = client.completions.create(prompt="1, 2, 3, 4,", max_tokens=8, echo=True, **kw)
    assert echoed.choices[0].text == "1, 2, 3, 4," + base.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        prompt=tokenizer("1, 2, 3, 4,")["input_ids"], max_tokens=8, echo=True, stream=True, **kw) if c.choices)
    assert streamed == echoed.choices[0].text

    stop = base.choices[0].text.strip().split(",")[1].strip()
    kept = client.completions.create(prompt="1, 2, 3, 4,", max_tokens=8, stop=[stop],
                                     extra_body={"include_stop_str_in_output": True}, **kw)
    assert kept.choices[0].finish_reason == "stop" and kept.choices[0].text.endswith(stop)
    assert base.choices[0].text.startswith(kept.choices[0].text)
    special = client.chat.completions.create(messages=msgs, max_tokens=64, extra_body={"skip_special_tokens": False,
                                             "ignore_eos": True, "stop": ["<|im_start|>"]}, **kw)
    assert "<|im_end|>" in special.choices[0].message.content


def test_chat_template_options_continue_an_answer(stack: Stack, client: openai.OpenAI) -> None:
    """vLLM's continue_final_message: the model goes on with the assistant's started message, the
    prompt /tokenize gives for the same options; add_generation_prompt and chat_template_kwargs."""
    msgs = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A yellow fruit is the"}]
    options = {"continue_final_message": True}
    ids = httpx.post(stack.http_url + "/tokenize", json={"messages": msgs, **options}, timeout=30).json()["tokens"]
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", max_tokens=12, temperature=0)
    chat = client.chat.completions.create(messages=msgs, extra_body=options, **kw)
    plain = client.completions.create(prompt=ids, **kw)
    assert chat.choices[0].message.content == plain.choices[0].text and chat.usage.prompt_tokens == len(ids)
    # the open message ends the prompt: no end-of-turn marker and no new assistant turn after it
    text = httpx.post(stack.http_url + "/detokenize", json={"tokens": ids}, timeout=30).json()["prompt"]
    assert text.endswith("A yellow fruit is the")
    closed = httpx.post(stack.http_url + "/tokenize", timeout=30,
                        json={"messages": msgs, "add_generation_prompt": False}).json()["tokens"]
    assert closed[: len(ids)] == ids and len(closed) > len(ids)
    for body, field in (({**options, "add_generation_prompt": True}, "continue_final_message"),
                        ({"chat_template_kwargs": {"tokenize": False}}, "chat_template_kwargs"),
                        ({"chat_template_kwargs": [1]}, "chat_template_kwargs")):
        r = httpx.post(stack.http_url + "/v1/chat/completions", json={"messages": msgs, **body}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    r = httpx.post(stack.http_url + "/v1/chat/completions", timeout=60,
                   json={"messages": msgs[:1], "max_tokens": 2, "chat_template_kwargs": {"enable_thinking": False}})
    assert r.status_code == 200, r.text


def test_structured_output_through_the_stack(client: openai.OpenAI) -> None:
    """OpenAI's response_format (json_schema, json_object) and vLLM's guided_choice / guided_regex /
    structured_outputs: the answer follows the grammar, streamed or whole, lookahead on (the default)."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    msgs = [{"role": "user", "content": "Give the largest city of France and its population as JSON."}]
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", max_tokens=60, temperature=0)
    r = client.chat.completions.create(messages=msgs, **kw, response_format={
        "type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    city = json.loads(r.choices[0].message.content)
    assert set(city) == {"city", "population"} and isinstance(city["population"], int)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        messages=msgs, stream=True, response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        **kw) if c.choices)
    assert streamed == r.choices[0].message.content
    assert isinstance(json.loads(client.chat.completions.create(
        messages=msgs, response_format={"type": "json_object"}, **kw).choices[0].message.content), (dict, list))
    yes_no = client.completions.create(prompt="Is Paris in France? Answer:", extra_body={"guided_choice": ["yes", "no"]}, **kw)
    assert yes_no.choices[0].text in ("yes", "no")
    phone = client.completions.create(prompt="A phone number:", extra_body={"guided_regex": "[0-9]{3}-[0-9]{4}"}, **kw)
    assert re.fullmatch("[0-9]{3}-[0-9]{4}", phone.choices[0].text)
    same = client.completions.create(prompt="A phone number:",
                                     extra_body={"structured_outputs": {"regex": "[0-9]{3}-[0-9]{4}"}}, **kw)
    assert same.choices[0].text == phone.choices[0].text


def test_echo_with_logprobs_scores_the_prompt(client: openai.OpenAI, tokenizer: Any, hf_model: Any) -> None:
    """What evaluation harnesses send (lm-eval's loglikelihood: echo, logprobs=1, max_tokens=1):
    the prompt tokens' logprobs, as transformers computes them, before the output's; the first
    prompt token has none. Computed on every request, its prefix cached or not."""
    text = "The capital of France is Paris. The capital of Italy is"
    ids = tokenizer(text)["input_ids"]
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits[0].log_softmax(-1)
    for _ in range(2):  # the second finds the prompt in the prefix caches and still scores it
        r = client.completions.create(model="SmolLM2-135M-Instruct", prompt=text, max_tokens=1, temperature=0,
                                      logprobs=1, echo=True)
        lp = r.choices[0].logprobs
        assert r.choices[0].text.startswith(text) and len(lp.tokens) == len(ids) + 1
        assert lp.tokens[: len(ids)] == [tokenizer.decode([i]) for i in ids]  # each token's text alone
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        for j in range(1, len(ids)):
            assert abs(lp.token_logprobs[j] - ref[j - 1, ids[j]].item()) < 1e-3, j
            best = tokenizer.decode([int(ref[j - 1].argmax())])
            assert list(lp.top_logprobs[j]) == [best], j
        assert r.usage.prompt_tokens_details.cached_tokens == 0
    streamed = list(client.completions.create(model="SmolLM2-135M-Instruct", prompt=text, max_tokens=4, temperature=0,
                                              logprobs=0, echo=True, stream=True))
    first = streamed[0].choices[0].logprobs
    assert first.token_logprobs[: len(ids)] == lp.token_logprobs[: len(ids)]
    assert "".join(c.choices[0].text for c in streamed if c.choices).startswith(text)


def test_seeded_sampling_reproducible_through_pipeline(client: openai.OpenAI) -> None:
    kw = dict(model="SmolLM2-135M-Instruct", prompt="Once upon a time", max_tokens=16, temperature=1.0, seed=7)
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    assert a == b


def test_n_choices_and_a_list_of_prompts(client: openai.OpenAI) -> None:
    """n samples of a prompt, each its own request: greedy ones equal the n=1 answer; seeded ones
    take seed + j (the first equals n=1 with the seed, a repeat gives the same choices); a list of
    prompts is answered in order, prompt i's sample j at index i * n + j; the prompt counts once."""
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", max_tokens=12)
    one = client.completions.create(prompt="The capital of France is", temperature=0, **kw)
    three = client.completions.create(prompt="The capital of France is", temperature=0, n=3, **kw)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert [c.text for c in three.choices] == [one.choices[0].text] * 3
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens

    story = dict(prompt="Once upon a time", temperature=1.0, seed=11, **kw)
    alone = client.completions.create(**story).choices[0].text
    sampled = [c.text for c in client.completions.create(n=3, **story).choices]
    assert sampled[0] == alone
    assert [c.text for c in client.completions.create(n=3, **story).choices] == sampled
    assert len(set(sampled)) > 1, sampled  # three seeds, three draws

    prompts = ["1, 2, 3,", "The capital of France is"]
    singles = [client.completions.create(prompt=p, temperature=0, **kw).choices[0].text for p in prompts]
    assert [c.text for c in client.completions.create(prompt=prompts, temperature=0, **kw).choices] == singles
    both = client.completions.create(prompt=prompts, temperature=0, n=2, **kw)
    assert [(c.index, c.text) for c in both.choices] == list(enumerate([singles[0]] * 2 + [singles[1]] * 2))


def test_n_chat_choices_streamed_equal_whole(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Name a fruit."}],
                              max_tokens=20, temperature=1.0, seed=5, n=2)
    whole = client.chat.completions.create(**kw)
    texts, roles, finish, usage = {0: "", 1: ""}, {0: 0, 1: 0}, {}, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
            roles[ch.index] += ch.delta.role == "assistant"
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
        usage = chunk.usage or usage
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert roles == {0: 1, 1: 1}  # each choice's first delta names the role, once
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_tokenize_counts_what_a_request_uses_and_detokenize_inverts_it(stack: Stack, client: openai.OpenAI) -> None:
    """vLLM's /tokenize: the count is the usage's prompt tokens of the same completion or chat."""
    url = stack.http_url
    text = "The quick brown fox jumps over the lazy dog."
    tok = httpx.post(url + "/tokenize", json={"prompt": text}, timeout=30).json()
    assert tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] > tok["count"]
    done = client.completions.create(model="SmolLM2-135M-Instruct", prompt=text, max_tokens=1, temperature=0)
    assert done.usage.prompt_tokens == tok["count"]
    msgs = [{"role": "user", "content": text}]
    chat_tok = httpx.post(url + "/tokenize", json={"messages": msgs}, timeout=30).json()
    chat = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=msgs, max_tokens=1, temperature=0)
    assert chat.usage.prompt_tokens == chat_tok["count"] > tok["count"]  # the template's tokens too
    assert httpx.post(url + "/detokenize", json={"tokens": tok["tokens"]}, timeout=30).json()["prompt"] == text
    for path, body, field in [("/tokenize", {"prompt": 5}, "prompt"), ("/detokenize", {"tokens": "abc"}, "tokens"),
                              ("/detokenize", {"tokens": [1, 10**7]}, "tokens"), ("/tokenize", {"messages": "hi"}, "messages")]:
        r = httpx.post(url + path, json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (path, body, r.text)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "temperature": "hot"}, "temperature"),
        ({"prompt": "hi", "model": "gpt-4"}, "model"),  # (a 404, as vLLM answers a model it does not serve)
        ({"prompt": "hi", "n": 0}, "n"),
        ({"prompt": "hi", "n": "2"}, "n"),
        ({"prompt": "hi", "n": 10**6}, "n"),
        ({"prompt": ["hi", 5]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["hi"] * 1000}, "prompt"),
        ({"prompt": [1, 2, 10**6]}, "prompt"),
        ({"prompt": "x " * 9000}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "hi", "logit_bias": {"x": 1}}, "logit_bias"),
        ({"prompt": "hi", "logit_bias": {"5": 200}}, "logit_bias"),
        ({"prompt": "hi", "logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"prompt": "hi", "max_tokens": 4, "min_tokens": 5}, "min_tokens"),
        ({"prompt": "hi", "prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
        ({"prompt": "hi", "prompt_logprobs": -1}, "prompt_logprobs"),
        ({"prompt": "hi", "prompt_logprobs": 21}, "prompt_logprobs"),
        ({"prompt": "hi", "prompt_logprobs": True}, "prompt_logprobs"),
        ({"prompt": "hi", "echo": "yes"}, "echo"),
        ({"prompt": "hi", "suffix": "end"}, "suffix"),
        ({"prompt": "hi", "best_of": 3}, "best_of"),
        ({"prompt": "hi", "response_format": {"type": "yaml"}}, "response_format"),
        ({"prompt": "hi", "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"prompt": "hi", "guided_json": "{not json"}, "guided_json"),
        ({"prompt": "hi", "guided_regex": "(unclosed"}, "guided_regex"),  # found by the prefill worker's compiler
        ({"prompt": "hi", "guided_choice": []}, "guided_choice"),
        ({"prompt": "hi", "guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
        ({"prompt": "hi", "structured_outputs": {"yaml": "x"}}, "structured_outputs"),
        ({"prompt": "hi", "guided_regex": "a+", "min_tokens": 2}, "min_tokens"),
        ({"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "hi", "priority": "high"}, "priority"),
        ({"prompt": "hi", "priority": 2**40}, "priority"),
        ({"prompt": "hi", "cache_salt": ""}, "cache_salt"),
        ({"prompt": "hi", "cache_salt": 7}, "cache_salt"),
        ({"prompt": "hi", "allowed_token_ids": []}, "allowed_token_ids"),
        ({"prompt": "hi", "allowed_token_ids": [5, "6"]}, "allowed_token_ids"),
        ({"prompt": "hi", "allowed_token_ids": [10**6]}, "allowed_token_ids"),
        ({"prompt": "hi", "allowed_token_ids": [5], "guided_regex": "a+"}, "allowed_token_ids"),
        ({"prompt": "hi", "allowed_token_ids": [2], "min_tokens": 2}, "allowed_token_ids"),  # 2: EOS
        ({"prompt": "hi", "bad_words": "word"}, "bad_words"),
        ({"prompt": "hi", "stop_token_ids": [True]}, "stop_token_ids"),
        ({"prompt": "hi", "bad_words": [" "]}, "bad_words"),
        ({"prompt": "hi", "stream": True, "stream_options": "usage"}, "stream_options"),
        ({"prompt": "hi", "stream": True, "stream_options": {"continuous_usage_stats": 1}}, "stream_options"),
        ({"prompt": "hi", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"prompt": "hi", "truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
        ({"prompt": "hi", "truncate_prompt_tokens": "5"}, "truncate_prompt_tokens"),
        ({"prompt": "hi", "truncate_prompt_tokens": 10**6}, "truncate_prompt_tokens"),
    ],
)
def test_invalid_completion_requests_get_400_naming_the_field(stack: Stack, body: dict, field: str) -> None:
    r = httpx.post(stack.http_url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == (404 if field == "model" else 400), r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"]


def test_malformed_json_and_messages(stack: Stack) -> None:
    r = httpx.post(stack.http_url + "/v1/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = httpx.post(stack.http_url + "/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
    r = httpx.post(stack.http_url + "/v1/chat/completions", json={"messages": "hello"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(stack.http_url + "/v1/chat/completions", timeout=30,
                   json={"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs", r.text
    msgs = [{"role": "user", "content": "x"}]
    r = httpx.post(stack.http_url + "/v1/chat/completions", json={"messages": msgs, "functions": [{"name": "f"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "functions" and "not supported" in r.text
    # the neutral values of such fields are served
    r = httpx.post(stack.http_url + "/v1/chat/completions", timeout=60, json={
        "messages": msgs, "max_tokens": 2, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}})
    assert r.status_code == 200, r.text
    ok = httpx.post(stack.http_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200  # still serving


def test_32_concurrent_requests_on_two_prefill_two_decode(stack: Stack, tokenizer: Any) -> None:
    prompts = [f"Question {i}: what is {i} plus {i}? Answer:" for i in range(32)]

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=stack.http_url, timeout=300) as c:
            rs = await asyncio.gather(*(c.post("/v1/completions", json={"prompt": p, "max_tokens": 16, "temperature": 0,
                                                                         "return_token_ids": True}) for p in prompts))
        return [r.json() for r in rs]

    together = asyncio.run(run())
    for p, r in list(zip(prompts, together))[:: 8]:  # spot-check against one-at-a-time requests
        alone = httpx.post(stack.http_url + "/v1/completions", json={"prompt": p, "max_tokens": 16, "temperature": 0,
                                                                   "return_token_ids": True}, timeout=120).json()
        assert r["choices"][0]["token_ids"] == alone["choices"][0]["token_ids"]
    assert all(len(r["choices"][0]["token_ids"]) > 0 for r in together)


def test_a_prompt_longer_than_a_workers_kv_pool_gets_400_at_once(stack: Stack) -> None:
    """The workers' KV pools hold fewer tokens than the model's context: a prompt that fits the
    model's context but not a pool is refused naming the prompt, not left waiting for blocks."""
    from launcher.stack_probe import worker_stats

    stats = worker_stats(stack)
    pool_tokens = min(s.total_blocks for s in stats.values()) * 16
    assert {s.max_model_len for s in stats.values()} == {pool_tokens}
    models = httpx.get(stack.http_url + "/v1/models", timeout=10).json()["data"]
    assert models[0]["max_model_len"] == pool_tokens  # what the deployment serves, learnt from its workers
    r = httpx.post(stack.http_url + "/v1/completions",
                   json={"prompt": [1000 + i % 5000 for i in range(pool_tokens + 16)], "max_tokens": 2}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "prompt" and "context length" in err["message"]


def test_a_max_tokens_the_context_cannot_hold_beside_the_prompt_is_400(stack: Stack) -> None:
    """As vLLM and OpenAI answer: an output limit the client set that does not fit beside the
    prompt is a 400 naming the field and the context; one that just fits is served; with no limit
    set, generation stops at the context instead."""
    context = httpx.get(stack.http_url + "/v1/models", timeout=10).json()["data"][0]["max_model_len"]
    messages = [{"role": "user", "content": "Hi"}]
    chat_len = httpx.post(stack.http_url + "/tokenize", json={"messages": messages}, timeout=10).json()["count"]
    prompt = [1000 + i for i in range(10)]
    cases = [("/v1/completions", {"prompt": prompt, "max_tokens": context - 9}, "max_tokens"),
             ("/v1/chat/completions", {"messages": messages, "max_tokens": context}, "max_tokens"),
             ("/v1/chat/completions", {"messages": messages, "max_tokens": 4, "max_completion_tokens": context},
              "max_completion_tokens"),
             ("/v1/responses", {"input": "Hi", "max_output_tokens": context}, "max_output_tokens")]
    for path, body, param in cases:
        r = httpx.post(stack.http_url + path, json=body, timeout=60)
        assert r.status_code == 400, (path, r.text)
        err = r.json()["error"]
        assert err["param"] == param and f"context length is {context} tokens" in err["message"], err
    fits = [("/v1/completions", {"prompt": prompt, "max_tokens": context - 10}),
            ("/v1/chat/completions", {"messages": messages, "max_completion_tokens": context - chat_len}),
            ("/v1/chat/completions", {"messages": messages})]  # the default: up to the context
    for path, body in fits:
        with httpx.stream("POST", stack.http_url + path, json={**body, "stream": True}, timeout=60) as r:
            assert r.status_code == 200, (path, r.read())  # left at once: the request is cancelled


def test_a_clients_request_id_names_the_response(stack: Stack) -> None:
    """vLLM's ``request_id`` (body) or the ``X-Request-Id`` header names the response (its id and
    its X-Request-Id header); with neither, the header carries the id the gateway made. Six
    requests sent at once with one id (more than the stack has workers of a role) are all served
    where they went."""
    url = stack.http_url + "/v1"
    base = {"max_tokens": 3, "temperature": 0}
    r = httpx.post(url + "/completions", json={**base, "prompt": "Hi", "request_id": "trace-1"}, timeout=60)
    assert r.status_code == 200 and r.json()["id"] == "cmpl-trace-1" and r.headers["x-request-id"] == "trace-1"
    r = httpx.post(url + "/chat/completions", headers={"X-Request-Id": "hdr-7"},
                   json={**base, "messages": [{"role": "user", "content": "Hi"}]}, timeout=60)
    assert r.status_code == 200 and r.json()["id"] == "chatcmpl-hdr-7" and r.headers["x-request-id"] == "hdr-7"
    r = httpx.post(url + "/completions", json={**base, "prompt": "Hi"}, timeout=60)
    assert r.status_code == 200 and r.json()["id"] == "cmpl-" + r.headers["x-request-id"]
    with httpx.stream("POST", url + "/completions", json={**base, "prompt": "Hi", "stream": True, "request_id": "s-2"},
                      timeout=60) as s:
        assert s.headers["x-request-id"] == "s-2"
        assert all(json.loads(line[6:])["id"] == "cmpl-s-2" for line in s.iter_lines() if line.startswith("data: {"))

    async def at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*(c.post(url + "/completions", json={**base, "prompt": "Hi", "max_tokens": 16,
                                                                              "request_id": "same"}) for _ in range(6)))
    retries = gateway_retries(stack)
    assert [r.status_code for r in asyncio.run(at_once())] == [200] * 6
    assert gateway_retries(stack) == retries  # served where they went: no worker refused a clashing id
    for body, headers, field in (({"request_id": ""}, {}, "request_id"), ({"request_id": 5}, {}, "request_id"),
                                 ({}, {"X-Request-Id": "x" * 300}, "X-Request-Id")):
        r = httpx.post(url + "/completions", headers=headers, json={**base, "prompt": "Hi", **body}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
