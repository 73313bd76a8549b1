"""A reasoning parser (vLLM's ``--reasoning-parser deepseek_r1``) on a gateway in front of the
stack's workers, read by the openai SDK: the model's thinking goes to ``reasoning`` (chat) or a
reasoning item (Responses), its answer to the content.

The bundled model does not think on its own; a few-shot conversation whose answers think in
``<think>...</think>`` makes it write the same shape, greedy. The stack's own gateway (no parser)
gives the raw text the split must account for exactly.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import openai
import pytest

from launcher.stack import Stack
from launcher.stack_probe import wait_idle
from tests.pipeline.gateway_process import Gateway

MODEL = "SmolLM2-135M-Instruct"
SHOTS: list[dict[str, Any]] = []
for q, t, a in (("What is 2+2?", "2 plus 2 is 4.", "4"), ("What is 5+1?", "5 plus 1 is 6.", "6"),
                ("What is 3+4?", "3 plus 4 is 7.", "7")):
    SHOTS += [{"role": "user", "content": q}, {"role": "assistant", "content": f"<think>{t}</think>{a}"}]
ASK = SHOTS + [{"role": "user", "content": "What is 3+3?"}]


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(stack, tmp_path_factory.mktemp("reasoning-gateway"), "--reasoning-parser", "deepseek_r1")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", timeout=120)


def _raw(stack: Stack, messages: list[dict[str, Any]], **more: Any) -> str:
    plain = openai.OpenAI(base_url=stack.http_url + "/v1", api_key="unused", timeout=120)
    text = plain.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0,
                                         **more).choices[0].message.content
    assert text is not None
    return text


def test_thinking_is_reasoning_whole_and_streamed(stack: Stack, client: openai.OpenAI) -> None:
    raw = _raw(stack, ASK)
    assert raw.startswith("<think>") and "</think>" in raw  # the few shots took
    thought, answer = raw.removeprefix("<think>").split("</think>", 1)
    msg = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, temperature=0).choices[0].message
    extra = msg.model_extra or {}
    assert (extra["reasoning"], extra["reasoning_content"], msg.content) == (thought, thought, answer)
    chunks = [c.choices[0].delta for c in client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=40, temperature=0, stream=True) if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in chunks) == thought
    assert "".join(d.content or "" for d in chunks) == answer
    hidden = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, temperature=0,
                                            extra_body={"include_reasoning": False}).choices[0].message
    assert hidden.content == answer and "reasoning" not in (hidden.model_extra or {})  # vLLM's include_reasoning
    # DeepSeek-R1's template opens <think> in the prompt: the answer is thinking until </think>
    opened = ASK + [{"role": "assistant", "content": "<think>"}]
    cont = {"extra_body": {"continue_final_message": True, "add_generation_prompt": False}}
    raw = _raw(stack, opened, **cont)
    thought, answer = raw.split("</think>", 1)
    msg = client.chat.completions.create(model=MODEL, messages=opened, max_tokens=40, temperature=0,
                                         **cont).choices[0].message
    assert ((msg.model_extra or {})["reasoning"], msg.content) == (thought, answer)


def test_responses_give_a_reasoning_item_then_the_message(stack: Stack, client: openai.OpenAI) -> None:
    raw = _raw(stack, ASK)
    thought, answer = raw.removeprefix("<think>").split("</think>", 1)
    kw: dict[str, Any] = dict(model=MODEL, input=ASK, max_output_tokens=40, temperature=0)
    r = client.responses.create(**kw)
    assert [it.type for it in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == thought and r.output_text == answer  # type: ignore[index, union-attr]
    with client.responses.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == thought
    assert final.output_text == answer and final.output[0].type == "reasoning"
    # the thinking goes back with the answer: the next turn's prompt holds the same tokens either way
    after = client.responses.create(model=MODEL, input=[*ASK, *(it.model_dump() for it in r.output),
                                                        {"role": "user", "content": "And 4+4?"}],
                                    max_output_tokens=40, temperature=0)
    chained = client.responses.create(model=MODEL, previous_response_id=r.id, input="And 4+4?",
                                      max_output_tokens=40, temperature=0)
    assert after.usage.input_tokens == chained.usage.input_tokens and after.output_text == chained.output_text


SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
          "additionalProperties": False}


def _finished(gateway: Gateway) -> float:
    """The gateway's finished requests, every finish reason."""
    text = httpx.get(gateway.http_url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("grove:request_success_total"))


def test_a_grammar_applies_once_the_thinking_ends(stack: Stack, client: openai.OpenAI, gateway: Gateway) -> None:
    """Structured output for a reasoning model (vLLM's reasoning-aware grammars): the model thinks
    as it would without the grammar, then answers under it; streamed as one answer, one usage. A
    prompt whose template closed the thinking already is under the grammar from the first token."""
    raw = _raw(stack, ASK)
    thought = raw.removeprefix("<think>").split("</think>", 1)[0]
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    before = _finished(gateway)
    got = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, temperature=0, response_format=fmt)
    assert _finished(gateway) == before + 1  # two pipeline requests, one request in the metrics
    msg = got.choices[0].message
    assert (msg.model_extra or {})["reasoning"] == thought
    assert isinstance(json.loads(msg.content or "")["answer"], int) and got.choices[0].finish_reason == "stop"
    thinking_tokens = len(client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=40, temperature=0, stop=["</think>"],
        extra_body={"include_stop_str_in_output": True, "return_token_ids": True}).choices[0].model_extra["token_ids"])
    assert thinking_tokens < got.usage.completion_tokens <= 40
    chunks = [c for c in client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, temperature=0,
                                                         response_format=fmt, stream=True,
                                                         stream_options={"include_usage": True})]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) == thought
    assert "".join(d.content or "" for d in deltas) == msg.content
    assert chunks[-1].usage.completion_tokens == got.usage.completion_tokens
    # no room left after the thinking: out of tokens, no answer
    short = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=thinking_tokens, temperature=0,
                                           response_format=fmt).choices[0]
    assert short.finish_reason == "length" and (short.message.model_extra or {})["reasoning"] == thought
    # the template closed the thinking: the grammar from the first token, no reasoning
    closed = ASK + [{"role": "assistant", "content": "<think>3 plus 3 is 6.</think>"}]
    done = client.chat.completions.create(
        model=MODEL, messages=closed, max_tokens=20, temperature=0, response_format=fmt,
        extra_body={"continue_final_message": True, "add_generation_prompt": False}).choices[0].message
    assert isinstance(json.loads(done.content or "")["answer"], int) and (done.model_extra or {}).get("reasoning") is None


def test_a_client_gone_while_it_thinks_frees_everything(stack: Stack, gateway: Gateway) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    body = {"model": MODEL, "messages": ASK, "max_tokens": 200, "temperature": 0, "response_format": fmt,
            "stream": True, "ignore_eos": True}
    with httpx.stream("POST", gateway.http_url + "/v1/chat/completions", json=body, timeout=60) as s:
        next(s.iter_lines())  # the first chunk, then the client leaves
    assert all(v == (0, 0, 0) for v in wait_idle(stack).values())
