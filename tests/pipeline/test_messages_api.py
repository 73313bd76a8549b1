"""Anthropic's Messages API through the stack, read by the official anthropic SDK: the same answer
as the chat completion it amounts to, whole and streamed; tool use and tool results; token
counting; errors in Anthropic's shape."""
from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from launcher.stack import Stack

MODEL = "SmolLM2-135M-Instruct"
SYSTEM = "Answer in one short sentence."
ASK = "What is the weather in Paris, in celsius?"
WEATHER = {"name": "get_weather", "description": "The weather in a city", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]}}
CHAT_WEATHER = {"type": "function", "function": {"name": WEATHER["name"], "description": WEATHER["description"],
                                                 "parameters": WEATHER["input_schema"]}}


@pytest.fixture(scope="module")
def client(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.http_url, api_key="unused", timeout=120)


@pytest.fixture(scope="module")
def chat(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.http_url + "/v1", api_key="unused", timeout=120)


def test_a_message_is_the_chat_answer_whole_and_streamed(client: anthropic.Anthropic, chat: openai.OpenAI) -> None:
    kw: dict[str, Any] = dict(model=MODEL, max_tokens=24, extra_body={"temperature": 0})  # (older SDKs' field)
    expected = chat.chat.completions.create(messages=[{"role": "system", "content": SYSTEM},
                                                      {"role": "user", "content": ASK}], model=MODEL, max_tokens=24,
                                            temperature=0)
    m = client.messages.create(system=SYSTEM, messages=[{"role": "user", "content": ASK}], **kw)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == expected.choices[0].message.content
    assert m.stop_reason == ("max_tokens" if expected.choices[0].finish_reason == "length" else "end_turn")
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) == expected.usage.prompt_tokens
    assert m.usage.output_tokens == expected.usage.completion_tokens
    with client.messages.stream(system=SYSTEM, messages=[{"role": "user", "content": ASK}], **kw) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert final.content[0].text == m.content[0].text and final.stop_reason == m.stop_reason
    assert final.usage.output_tokens == m.usage.output_tokens
    raw = [k for k in kinds if k not in ("text",)]  # (the SDK adds a "text" event beside each delta)
    assert raw[:2] == ["message_start", "content_block_start"] and raw[-3:] == ["content_block_stop", "message_delta",
                                                                                 "message_stop"]
    assert set(raw[2:-3]) == {"content_block_delta"}
    stop = m.content[0].text[2:5]  # a stop sequence the answer meets
    stopped = client.messages.create(system=SYSTEM, messages=[{"role": "user", "content": ASK}],
                                     stop_sequences=[stop], **kw)
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", stop)
    assert stopped.content[0].text == m.content[0].text[:2]
    # system as text blocks, a conversation of blocks: the same prompt
    blocks = client.messages.create(system=[{"type": "text", "text": SYSTEM}],
                                    messages=[{"role": "user", "content": [{"type": "text", "text": ASK}]}], **kw)
    assert blocks.content[0].text == m.content[0].text


def test_tool_use_and_its_result(client: anthropic.Anthropic, chat: openai.OpenAI) -> None:
    """A forced tool is a tool_use block whose input is chat's arguments, streamed as
    input_json_delta; its tool_result goes back to the model as chat's tool turn."""
    kw: dict[str, Any] = dict(model=MODEL, max_tokens=60, extra_body={"temperature": 0})
    named = chat.chat.completions.create(messages=[{"role": "user", "content": ASK}], tools=[CHAT_WEATHER],
                                         tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                         model=MODEL, max_tokens=60, temperature=0)
    call = (named.choices[0].message.tool_calls or [])[0]
    m = client.messages.create(messages=[{"role": "user", "content": ASK}], tools=[WEATHER],
                               tool_choice={"type": "tool", "name": "get_weather"}, **kw)
    (use,) = m.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    assert use.input == json.loads(call.function.arguments) and m.stop_reason == "tool_use"
    with client.messages.stream(messages=[{"role": "user", "content": ASK}], tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"}, **kw) as stream:
        partial = "".join(e.delta.partial_json for e in stream if e.type == "content_block_delta")
        final = stream.get_final_message()
    assert partial == call.function.arguments and final.content[0].input == use.input
    any_tool = client.messages.create(messages=[{"role": "user", "content": ASK}], tools=[WEATHER],
                                      tool_choice={"type": "any"}, **kw)
    assert [b.type for b in any_tool.content] == ["tool_use"] * len(any_tool.content) and any_tool.content
    assert any_tool.stop_reason == "tool_use"

    turns: list[Any] = [{"role": "user", "content": ASK}, {"role": "assistant", "content": [use.model_dump()]},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                      "content": '{"temperature": 18}'}]}]
    answer = client.messages.create(messages=turns, tools=[WEATHER], max_tokens=24, model=MODEL,
                                    extra_body={"temperature": 0})
    expected = chat.chat.completions.create(model=MODEL, max_tokens=24, temperature=0, tools=[CHAT_WEATHER], messages=[
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": use.id, "type": "function", "function": {"name": use.name, "arguments": json.dumps(use.input)}}]},
        {"role": "tool", "tool_call_id": use.id, "content": '{"temperature": 18}'}])
    assert answer.content[0].text == expected.choices[0].message.content
    counted = client.messages.count_tokens(messages=turns, tools=[WEATHER], model=MODEL)
    assert counted.input_tokens == expected.usage.prompt_tokens


@pytest.mark.parametrize("body, field", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages[0].content[0]"),
    ({"max_tokens": 8, "messages": [{"role": "system", "content": "hi"}]}, "messages[0].role"),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "tool_choice": {"type": "auto"},
      "tools": [WEATHER]}, "tool_choice"),  # the stack's gateway has no tool-call parser
    ({"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "stop_sequences": [""]}, "stop_sequences"),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),  # not a Messages field
])
def test_bad_requests_get_anthropics_400(stack: Stack, client: anthropic.Anthropic, body: dict, field: str) -> None:
    r = httpx.post(stack.http_url + "/v1/messages", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert field in error["error"]["message"], error
    if "max_tokens" in body:  # (the SDK itself asks for max_tokens) the SDK raises its error for the 400
        given = {"model": MODEL, **{k: v for k, v in body.items() if k != "n"}}
        with pytest.raises(anthropic.BadRequestError):
            client.messages.create(**given, extra_body={"n": 2} if "n" in body else None)


def test_a_model_not_served_is_anthropics_404(stack: Stack, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="claude-x", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    error = e.value.body
    assert error["type"] == "error" and error["error"]["type"] == "not_found_error"
    assert "'claude-x' is not served here" in error["error"]["message"]
