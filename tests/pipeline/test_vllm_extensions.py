"""vLLM's extensions to the OpenAI API through the stack: prompt_logprobs, allowed_token_ids and
bad_words, truncate_prompt_tokens, stream_options.continuous_usage_stats, chat's echo; the fields
of vLLM's that Grove does not implement get a 400 naming them."""
from __future__ import annotations

import re
from typing import Any

import grpc
import httpx
import openai
import pytest
import torch

from engine.tokenizer import bad_word_ids
from grove.v1 import api_pb2 as pb
from grove.v1 import api_pb2_grpc as pb_grpc
from launcher.stack import Stack


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.http_url + "/v1", api_key="unused", timeout=120)


def test_allowed_token_ids_and_bad_words(client: openai.OpenAI, tokenizer: Any) -> None:
    """vLLM's allowed_token_ids: every output token is one of them; bad_words: the answer's own
    words, banned, are gone from its tokens, and the rest of the answer goes on."""
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", prompt="The capital of France is", max_tokens=12,
                              temperature=0)
    plain = client.completions.create(extra_body={"return_token_ids": True}, **kw).choices[0]
    ids = plain.model_extra["token_ids"]
    allowed = sorted((set(ids) | set(tokenizer(" London, Rome")["input_ids"])) - {ids[0]})  # not its first token
    only = client.completions.create(extra_body={"return_token_ids": True, "allowed_token_ids": allowed}, **kw)
    got = only.choices[0].model_extra["token_ids"]
    assert got and set(got) <= set(allowed) and got != ids

    words = re.findall(r"[A-Za-z]{4,}", plain.text)[:2]
    assert words, plain.text
    banned = client.completions.create(extra_body={"return_token_ids": True, "bad_words": words}, **kw).choices[0]
    out = banned.model_extra["token_ids"]
    for seq in bad_word_ids(tokenizer, words):
        assert not any(tuple(out[i : i + len(seq)]) == seq for i in range(len(out))), (seq, banned.text)
    assert out != ids and len(out) == len(ids)


def test_stop_reason_names_the_stop_that_ended_each_choice(stack: Stack, client: openai.OpenAI) -> None:
    """vLLM's stop_reason: the stop string matched or the stop_token_ids token, null for the model's
    own end or a length cut; whole and streamed, completions and chat, and over gRPC."""
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", prompt="The capital of France is", max_tokens=12,
                              temperature=0)
    plain = client.completions.create(extra_body={"return_token_ids": True}, **kw).choices[0]
    assert plain.model_extra["stop_reason"] is None
    ids, stop = plain.model_extra["token_ids"], plain.text[3:6]
    assert len(stop) == 3 and stop in plain.text
    by_string = client.completions.create(stop=[stop, "zzz"], **kw).choices[0]
    assert (by_string.finish_reason, by_string.model_extra["stop_reason"]) == ("stop", stop)
    by_token = client.completions.create(extra_body={"stop_token_ids": [ids[2]]}, **kw).choices[0]
    assert (by_token.finish_reason, by_token.model_extra["stop_reason"]) == ("stop", ids[2])
    streamed = [c.choices[0] for c in client.completions.create(stop=[stop], stream=True, **kw)]
    assert [c.model_extra["stop_reason"] for c in streamed] == [None] * (len(streamed) - 1) + [stop]
    msgs = [{"role": "user", "content": "Name a colour."}]
    said = client.chat.completions.create(model=kw["model"], messages=msgs, max_tokens=12, temperature=0).choices[0]
    cut = (said.message.content or "")[2:5]
    chat = client.chat.completions.create(model=kw["model"], messages=msgs, max_tokens=12, temperature=0,
                                          stop=[cut]).choices[0]
    assert (chat.finish_reason, chat.model_extra["stop_reason"]) == ("stop", cut)

    with grpc.insecure_channel(stack.grpc_address) as channel:
        request = pb.GenerateRequest(prompt=kw["prompt"], sampling=pb.SamplingParams(max_tokens=12, temperature=0,
                                                                                     stop=[stop]))
        got = pb_grpc.GroveStub(channel).Generate(request, timeout=60)
    assert got.finish_reason == "stop" and got.stop_reason.text == stop


def test_vllm_prompt_logprobs_field(stack: Stack, tokenizer: Any, hf_model: Any) -> None:
    """vLLM's ``prompt_logprobs: k``: beside a completion's choice (a chat response's, beside its
    choices), null for the first prompt token, then each prompt token's logprob, rank and text and
    the k likeliest tokens', by token id, as transformers scores them. With echo and logprobs too,
    each keeps its own k."""
    text = "My favourite colour is seventeen, said the walrus. The capital of Italy is"
    ids = tokenizer(text)["input_ids"]
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits[0].log_softmax(-1)
    url = stack.http_url + "/v1/completions"
    body = {"prompt": text, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 2}
    r = httpx.post(url, json=body, timeout=60)
    assert r.status_code == 200, r.text
    plp = r.json()["choices"][0]["prompt_logprobs"]
    assert len(plp) == len(ids) and plp[0] is None
    ranked = 0
    for j in range(1, len(ids)):
        entry, want = plp[j], ref[j - 1]
        own = entry[str(ids[j])]
        assert abs(own["logprob"] - want[ids[j]].item()) < 1e-3, j
        assert own["decoded_token"] == tokenizer.decode([ids[j]])
        likelier = int((want > want[ids[j]] + 1e-3).sum())
        assert likelier + 1 <= own["rank"] <= int((want > want[ids[j]] - 1e-3).sum()) + 1, (j, own)
        ranked += own["rank"] > 2
        top = want.topk(2)
        assert len(entry) == 2 + (own["rank"] > 2), entry  # the prompt's token and the top 2
        for rank, (i, lp) in enumerate(zip(top.indices.tolist(), top.values.tolist()), start=1):
            if str(i) in entry and i != ids[j]:
                assert entry[str(i)]["rank"] == rank and abs(entry[str(i)]["logprob"] - lp) < 1e-3, (j, entry)
    assert ranked > 3  # prompt tokens the model did not expect: ranks are counted, not assumed

    both = httpx.post(url, json={**body, "prompt_logprobs": 3, "echo": True, "logprobs": 1}, timeout=60).json()
    choice = both["choices"][0]
    assert all(t is None or len(t) == 1 for t in choice["logprobs"]["top_logprobs"])  # echo's own k
    assert all(len(e) >= 3 for e in choice["prompt_logprobs"][1:])
    assert choice["logprobs"]["token_logprobs"][1 : len(ids)] == [e[str(t)]["logprob"] for e, t in
                                                                   zip(choice["prompt_logprobs"][1:], ids[1:])]

    chat = httpx.post(stack.http_url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "n": 2, "prompt_logprobs": 0}).json()
    assert len(chat["prompt_logprobs"]) == chat["usage"]["prompt_tokens"] and chat["prompt_logprobs"][0] is None
    assert all(len(e) == 1 for e in chat["prompt_logprobs"][1:]) and "prompt_logprobs" not in chat["choices"][0]


def test_continuous_usage_stats_count_each_choice_so_far(client: openai.OpenAI) -> None:
    """vLLM's ``stream_options.continuous_usage_stats``: every chunk carries its choice's usage so
    far (the prompt's tokens and the choice's own), the last chunk the request's; without
    include_usage no chunk has usage, as in vLLM."""
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", prompt="Once upon a time", max_tokens=16,
                              temperature=1.0, seed=3, n=2, stream=True)
    chunks = list(client.completions.create(stream_options={"include_usage": True, "continuous_usage_stats": True},
                                            **kw))
    *parts, last = chunks
    counts: dict[int, list[int]] = {0: [], 1: []}
    for chunk in parts:
        (ch,) = chunk.choices
        assert chunk.usage.prompt_tokens == last.usage.prompt_tokens  # n samples of one prompt: it counts once
        assert chunk.usage.total_tokens == chunk.usage.prompt_tokens + chunk.usage.completion_tokens
        counts[ch.index].append(chunk.usage.completion_tokens)
    for seen in counts.values():
        assert seen == sorted(seen) and seen[0] >= 1 and len(set(seen)) > 1
    assert counts[0][-1] + counts[1][-1] == last.usage.completion_tokens and not last.choices
    plain = list(client.completions.create(stream_options={"continuous_usage_stats": True}, **kw))
    assert all(c.usage is None for c in plain)


def test_truncate_prompt_tokens_keeps_the_prompts_end(stack: Stack, client: openai.OpenAI, tokenizer: Any) -> None:
    """vLLM's ``truncate_prompt_tokens: k``: the prompt's last k tokens only, as if they were the
    prompt (echo returns them); -1 keeps what the context takes, so a short prompt stays whole and
    a prompt longer than the context is served."""
    text = "The quick brown fox jumps over the lazy dog. " * 4 + "Count with me: one, two, three,"
    ids = tokenizer(text)["input_ids"]
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", max_tokens=8, temperature=0)
    cut = client.completions.create(prompt=text, echo=True, extra_body={"truncate_prompt_tokens": 12}, **kw)
    tail = client.completions.create(prompt=ids[-12:], **kw)
    assert cut.usage.prompt_tokens == 12
    assert cut.choices[0].text == tokenizer.decode(ids[-12:]) + tail.choices[0].text
    whole = client.completions.create(prompt=text, extra_body={"truncate_prompt_tokens": -1}, **kw)
    assert whole.usage.prompt_tokens == len(ids)
    chat = client.chat.completions.create(messages=[{"role": "user", "content": text}],
                                          extra_body={"truncate_prompt_tokens": 10}, **kw)
    assert chat.usage.prompt_tokens == 10
    context = client.models.list().data[0].model_extra["max_model_len"]
    long = [ids[i % len(ids)] for i in range(context + 50)]
    r = client.completions.create(prompt=long, extra_body={"truncate_prompt_tokens": 64}, **kw)
    assert r.usage.prompt_tokens == 64 and r.usage.completion_tokens > 0


def test_return_tokens_as_token_ids(stack: Stack) -> None:
    """vLLM's ``return_tokens_as_token_ids``: logprobs name every token "token_id:<id>", the
    sampled ones the ids the output has; a non-boolean is a 400."""
    url = stack.http_url + "/v1"
    kw = {"max_tokens": 5, "temperature": 0, "logprobs": 2, "return_token_ids": True,
          "return_tokens_as_token_ids": True}
    r = httpx.post(url + "/completions", json={"prompt": "The capital of France is", **kw}, timeout=60).json()
    choice = r["choices"][0]
    assert choice["logprobs"]["tokens"] == [f"token_id:{i}" for i in choice["token_ids"]]
    assert all(len(top) == 2 and all(re.fullmatch(r"token_id:\d+", k) for k in top)
               for top in choice["logprobs"]["top_logprobs"])
    r = httpx.post(url + "/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                      **kw, "logprobs": True, "top_logprobs": 2}, timeout=60).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == [f"token_id:{i}" for i in r["choices"][0]["token_ids"]]
    assert all(t["token"].startswith("token_id:") for c in content for t in c["top_logprobs"])
    bad = httpx.post(url + "/completions", json={"prompt": "Hi", "return_tokens_as_token_ids": "yes"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "return_tokens_as_token_ids"


def test_chat_echo_puts_the_assistants_last_message_first(client: openai.OpenAI) -> None:
    """vLLM's chat ``echo``: an answer to go on with (continue_final_message) comes back whole."""
    start = "The three primary colors are"
    msgs = [{"role": "user", "content": "Name the primary colors."}, {"role": "assistant", "content": start}]
    kw: dict[str, Any] = dict(model="", messages=msgs, max_tokens=12, temperature=0)
    go_on = {"continue_final_message": True, "add_generation_prompt": False}
    rest = client.chat.completions.create(**kw, extra_body=go_on).choices[0].message.content
    assert rest and not rest.startswith(start)
    echoed = client.chat.completions.create(**kw, extra_body={**go_on, "echo": True})
    assert echoed.choices[0].message.content == start + rest
    stream = client.chat.completions.create(**kw, stream=True, extra_body={**go_on, "echo": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == start + rest
    # the last message is the user's: nothing goes before the answer
    plain = dict(model="", messages=msgs[:1], max_tokens=8, temperature=0)
    assert client.chat.completions.create(**plain, extra_body={"echo": True}).choices[0].message.content == \
        client.chat.completions.create(**plain).choices[0].message.content


@pytest.mark.parametrize("field, value", [("prompt_embeds", "AAAA"),
                                          ("logits_processors", ["m.f"]), ("guided_whitespace_pattern", " *"),
                                          ("structural_tag", "{}")])
def test_vllm_fields_grove_does_not_implement_are_refused(stack: Stack, field: str, value: Any) -> None:
    for path, body in (("/v1/completions", {"prompt": "Hi"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})):
        r = httpx.post(stack.http_url + path, json={**body, "max_tokens": 2, field: value}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_sagemakers_invocations_answers_as_chat_or_completions(stack: Stack) -> None:
    """vLLM's /invocations: a body with messages is a chat, one with a prompt a completion."""
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
                       ("/v1/completions", {"prompt": "The sky is"})):
        body = {**body, "max_tokens": 8, "temperature": 0}
        want = httpx.post(stack.http_url + path, json=body, timeout=60).json()
        got = httpx.post(stack.http_url + "/invocations", json=body, timeout=60).json()
        assert got["object"] == want["object"] and got["choices"] == want["choices"]
