"""Tool calls through the official openai client against the real stack: a named function or
"required", whole and streamed, and the choices that get a 400."""
from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from launcher.stack import Stack


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.http_url + "/v1", api_key="unused", timeout=120)


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}


def test_tool_calls_named_and_required(stack: Stack, client: openai.OpenAI) -> None:
    """A named tool_choice or "required": the answer is a call, its arguments JSON that follows the
    tool's schema (structured output), whole or streamed; the call and the tool's answer go back in
    the next turn; "auto" (a parser of the model's own format) and wrong choices get 400."""
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", max_tokens=80, temperature=0, tools=[WEATHER, CLOCK])
    named = client.chat.completions.create(messages=msgs, tool_choice={"type": "function", "function": {"name": "get_weather"}}, **kw)
    call = named.choices[0].message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
    assert named.choices[0].finish_reason == "stop" and named.choices[0].message.content is None
    required = client.chat.completions.create(messages=msgs, tool_choice="required", **kw)
    calls = required.choices[0].message.tool_calls
    assert required.choices[0].finish_reason == "tool_calls" and calls
    assert all(c.function.name in ("get_weather", "get_time") and isinstance(json.loads(c.function.arguments), dict)
               for c in calls)
    # streamed: each call's id and name first, then its arguments as they come (as vLLM streams them)
    chunks = [c.choices[0] for c in client.chat.completions.create(
        messages=msgs, tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True, **kw) if c.choices]
    streamed = [tc for c in chunks for tc in (c.delta.tool_calls or [])]
    # (the prefill's first token streams alone; how the rest is cut depends on lookahead's steps)
    assert streamed[0].id and streamed[0].function.name == "get_weather" and len(streamed) >= 2
    assert all(tc.index == 0 and tc.id is None and tc.function.name is None for tc in streamed[1:])
    assert "".join(tc.function.arguments for tc in streamed) == call.function.arguments
    assert not any(c.delta.content for c in chunks) and chunks[-1].finish_reason == "stop"
    chunks = [c.choices[0] for c in client.chat.completions.create(
        messages=msgs, tool_choice="required", stream=True, **kw) if c.choices]
    streamed = [tc for c in chunks for tc in (c.delta.tool_calls or [])]
    assert [(tc.index, tc.function.name) for tc in streamed if tc.id] == [(k, c.function.name) for k, c in enumerate(calls)]
    arguments = [""] * len(calls)
    for tc in streamed:
        arguments[tc.index] += tc.function.arguments or ""
    assert arguments == [c.function.arguments for c in calls]  # the whole answer's, as written
    assert not any(c.delta.content for c in chunks) and chunks[-1].finish_reason == "tool_calls"
    assert all(c.delta.role or c.delta.tool_calls or c.finish_reason for c in chunks)  # none says nothing

    turn2 = msgs + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                    {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18}'}]
    answer = client.chat.completions.create(messages=turn2, **kw)  # tool_choice "none" (vLLM's default): text
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls

    url = stack.http_url + "/v1/chat/completions"
    for extra, field in (({"tool_choice": "auto"}, "tool_choice"),
                         ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
                         ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
                         ({"tools": [{"type": "function", "function": {}}], "tool_choice": "required"}, "tools[0]")):
        body = {"messages": msgs, "tools": [WEATHER], **extra}
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    r = httpx.post(url, json={"messages": msgs, "tool_choice": "required"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    r = httpx.post(stack.http_url + "/v1/completions", json={"prompt": "x", "tools": [WEATHER]}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


def test_parallel_tool_calls_false_gives_one_call(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "What are the weather and the time in Paris, Tokyo and Lima?"}]
    one = client.chat.completions.create(model="", messages=msgs, max_tokens=120, temperature=0, tools=[WEATHER, CLOCK],
                                         tool_choice="required", parallel_tool_calls=False)
    calls = one.choices[0].message.tool_calls
    assert one.choices[0].finish_reason == "tool_calls" and len(calls) == 1
